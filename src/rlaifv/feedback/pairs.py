"""Preference pairs from scored candidates: gap, cap, length balance (their exports: feedback.export).

The pairs stage of the data engine (REFERENCE 4). Each candidate's score is ``-n_rejected`` over its claims'
verdicts. For one prompt, every two candidates whose scores differ by at least ``min_gap`` form a pair, the higher
score chosen; at most ``max_pairs_per_prompt`` pairs are drawn per prompt with a seeded generator. Length balancing
then drops the pairs whose rejected answer is much longer than the chosen one, because fewer words mean fewer claims
and so fewer rejections: without it DPO learns "shorter is better" rather than "grounded is better".

Everything here is cheap and deterministic, so :func:`build_pairs` resumes by rebuilding from its inputs, and swaps
the finished folder into place in one rename.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
from collections import defaultdict
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from rlaifv.config import PairsConfig
from rlaifv.files import CorruptFile, publish_dir, write_json
from rlaifv.progress import log
from rlaifv.records import Candidate, Pair, Prompt, Scored, Verdict
from rlaifv.store import ShardedStore

# r in {0, 0.02, ..., 0.98}, as exact fractions i / 50 so that comparisons at the boundary are exact.
BALANCE_STEPS = 50
SUMMARY_FILE = "summary.json"
INPUTS_FILE = "inputs.json"

# -- scores -------------------------------------------------------------------------------------------------------


def score_candidates(verdicts: Iterable[Verdict]) -> list[Scored]:
    """One :class:`Scored` per candidate that has verdicts, sorted by (prompt_id, sample_idx).

    A candidate without claims has no verdicts and so no score: it cannot be compared on evidence, and scoring it 0
    would make an empty answer the best one. A support claim (`Verdict.support`) counts only when accepted.
    """
    counts: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
    for verdict in verdicts:
        if verdict.support and not verdict.accepted:
            continue  # its detailed claim carries this error already
        count = counts[(verdict.prompt_id, verdict.sample_idx)]
        count[0] += 1
        count[1] += int(not verdict.accepted)
    return [Scored.from_counts(pid, idx, n, rejected) for (pid, idx), (n, rejected) in sorted(counts.items())]


# -- pairs of one prompt ------------------------------------------------------------------------------------------


def _stable_hash(text: str) -> int:
    """A 64-bit hash that is the same in every process (Python's ``hash`` of a str is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def prompt_rng(seed: int, prompt_id: str) -> np.random.Generator:
    """The generator that picks a prompt's pairs: depends on the seed and the prompt alone.

    Seeding per prompt (instead of one generator walked across prompts) keeps a prompt's choice the same when other
    prompts are added, removed or reordered. The seed is hashed with the id, so a negative seed is fine too.
    """
    return np.random.default_rng(_stable_hash(f"{seed}\x00{prompt_id}"))


def eligible_pairs(
    scored: list[Scored], texts: dict[int, str], min_gap: float, keep_accepted: bool = False
) -> list[tuple[Scored, Scored]]:
    """Every (chosen, rejected) pair of candidates with a score gap of at least ``min_gap``, before the cap.

    Equal scores never pair: they carry no preference. Pairs with identical texts are dropped (nothing to learn), and
    a (chosen text, rejected text) combination seen before is skipped, so duplicate samples give one pair, not two.
    With ``keep_accepted``, a pair whose chosen answer has fewer accepted claims than the rejected one is dropped
    too (`PairsConfig.keep_accepted`). Order is by sample index, which makes the later seeded draw reproducible.
    """
    missing = sorted({s.sample_idx for s in scored} - texts.keys())
    if missing:
        raise ValueError(f"prompt {scored[0].prompt_id}: scores for samples {missing} without a candidate text")
    out: list[tuple[Scored, Scored]] = []
    seen: set[tuple[str, str]] = set()
    for a, b in itertools.combinations(sorted(scored, key=lambda s: s.sample_idx), 2):
        if a.score == b.score or abs(a.score - b.score) < min_gap:
            continue
        chosen, rejected = (a, b) if a.score > b.score else (b, a)
        if keep_accepted and accepted(chosen) < accepted(rejected):
            continue
        texts_pair = (texts[chosen.sample_idx], texts[rejected.sample_idx])
        if texts_pair[0] == texts_pair[1] or texts_pair in seen:
            continue
        seen.add(texts_pair)
        out.append((chosen, rejected))
    return out


def accepted(candidate: Scored) -> int:
    """Claims of a candidate that the labeler accepted."""
    return candidate.n_claims - candidate.n_rejected


def cap_pairs(items: list[Any], cap: int, rng: np.random.Generator) -> list[Any]:
    """At most ``cap`` items drawn without replacement, kept in their original order."""
    if len(items) <= cap:
        return list(items)
    picked = sorted(int(i) for i in rng.choice(len(items), size=cap, replace=False))
    return [items[i] for i in picked]


def pick_pairs(found: list[tuple[Scored, Scored]], texts: dict[int, str], cap: int, closest_length: int,
               rng: np.random.Generator, closest_by: str) -> list[tuple[Scored, Scored]]:
    """At most ``cap`` of a prompt's eligible pairs: ``closest_length`` ranked ones, then a seeded draw among the
    others; in their original order.

    ``closest_by`` names the ranking: 'words' takes the pairs whose answers differ least in words; 'accepted_gain'
    those whose chosen answer has the most accepted claims more than the rejected one, then the least word gap;
    'mixed' fills the ranked places alternately by 'words' and 'accepted_gain', each with a pair not yet taken.
    The earlier pair wins a tie.
    """
    gap = [abs(n_words(texts[c.sample_idx]) - n_words(texts[r.sample_idx])) for c, r in found]
    lost_gain = [accepted(r) - accepted(c) for c, r in found]  # minus the accepted claims the chosen answer adds
    rank = {"words": lambda i: (gap[i], i), "accepted_gain": lambda i: (lost_gain[i], gap[i], i)}  # smaller first

    keys = ("words", "accepted_gain") if closest_by == "mixed" else (closest_by,)
    closest: list[int] = []
    for place in range(min(closest_length, cap, len(found))):
        closest.append(min((i for i in range(len(found)) if i not in closest), key=rank[keys[place % len(keys)]]))
    rest = [i for i in range(len(found)) if i not in closest]
    keep = set(closest) | set(cap_pairs(rest, cap - len(closest), rng))
    return [found[i] for i in sorted(keep)]


def pairs_for_prompt(
    prompt: Prompt,
    scored: list[Scored],
    texts: dict[int, str],
    cfg: PairsConfig,
    meta: dict[str, Any] | None = None,
) -> list[Pair]:
    """The preference pairs of one prompt: gap rule, identical texts dropped, then the cap (`pick_pairs`).

    ``scored`` are the prompt's scored candidates, ``texts`` maps their sample index to the response text. ``meta``
    is copied into every pair beside ``chosen_idx`` / ``rejected_idx`` (which win on a name clash).
    """
    chosen_rejected = pick_pairs(eligible_pairs(scored, texts, cfg.min_gap, cfg.keep_accepted), texts,
                                 cfg.max_pairs_per_prompt, cfg.closest_length, prompt_rng(cfg.seed, prompt.prompt_id),
                                 cfg.closest_by)
    return [
        Pair(
            prompt_id=prompt.prompt_id,
            image=prompt.image,
            question=prompt.question,
            chosen=texts[chosen.sample_idx],
            rejected=texts[rejected.sample_idx],
            chosen_score=chosen.score,
            rejected_score=rejected.score,
            round=cfg.round,
            ref_chosen_logp=None,
            ref_rejected_logp=None,
            meta={**(meta or {}), "chosen_idx": chosen.sample_idx, "rejected_idx": rejected.sample_idx},
        )
        for chosen, rejected in chosen_rejected
    ]


# -- length balance -----------------------------------------------------------------------------------------------


def n_words(text: str) -> int:
    """Length in words, the unit of the length-balance rule."""
    return len(text.split())


def length_balance(pairs: list[Pair]) -> tuple[list[Pair], float | None]:
    """Drop pairs whose rejected answer is much longer than the chosen one, at the threshold that best evens lengths.

    For r in {0, 0.02, ..., 0.98} the pairs with ``(len(rejected) - len(chosen)) / len(rejected) <= r`` are kept
    (lengths in words; a zero-word rejected answer is never longer, so its pair is always kept). The r minimizing
    ``|mean len(chosen) - mean len(rejected)| / mean len(rejected)`` over the kept pairs wins; an r that keeps nothing
    is skipped. Ties go to the larger r, which keeps at least as many pairs: when two thresholds balance lengths
    equally well, the one that throws away less data is better. All comparisons are exact (integer / fraction
    arithmetic), so a ratio that sits on a grid point and tied objectives behave as written.

    Returns the kept pairs in their original order and r, or ``([], None)`` when no r keeps a pair (no pairs at all,
    or only pairs whose rejected answer is over 50 times longer).
    """
    if not pairs:
        return [], None
    chosen_len = np.array([n_words(p.chosen) for p in pairs], dtype=np.int64)
    rejected_len = np.array([n_words(p.rejected) for p in pairs], dtype=np.int64)
    best: tuple[Fraction | float, int, np.ndarray] | None = None
    for step in range(BALANCE_STEPS):
        # (lr - lc) / lr <= step / 50  <=>  50 (lr - lc) <= step * lr, for lr > 0; lr == 0 always passes.
        keep = BALANCE_STEPS * (rejected_len - chosen_len) <= step * rejected_len
        if not keep.any():
            continue
        objective = _length_gap(int(chosen_len[keep].sum()), int(rejected_len[keep].sum()))
        if best is None or objective <= best[0]:
            best = (objective, step, keep)
    if best is None:
        return [], None
    _, step, keep = best
    return [p for p, k in zip(pairs, keep) if k], step / BALANCE_STEPS


def _length_gap(sum_chosen: int, sum_rejected: int) -> Fraction | float:
    """``|mean chosen - mean rejected| / mean rejected``: the pair count cancels, so sums suffice."""
    if sum_rejected == 0:  # every kept rejected answer is empty: balanced only if the chosen ones are too
        return Fraction(0) if sum_chosen == 0 else math.inf
    return Fraction(abs(sum_chosen - sum_rejected), sum_rejected)


# -- the stage ----------------------------------------------------------------------------------------------------


def build_pairs(
    prompts: ShardedStore[Prompt],
    candidates: ShardedStore[Candidate],
    verdicts: ShardedStore[Verdict],
    out: Path,
    cfg: PairsConfig,
) -> dict[str, Any]:
    """Score every judged candidate, pair them per prompt, balance lengths; write ``out/scores`` and ``out/pairs``.

    ``out`` belongs to this stage: it is built in a temporary folder beside it and swapped in by rename, so a crash
    leaves the previous result or none, never half a pair store. The stage is pure and fast, so resuming means
    rebuilding; when ``out`` already holds a result of the same config from the same input shards, its summary is
    returned without recomputing. Inputs that disagree (a verdict without its candidate or prompt) raise
    ``ValueError``: they mean the upstream stages ran on different data.

    Returns the summary (also saved as ``out/summary.json``): ``n_prompts``, ``n_scored``, ``n_prompts_unscored`` (no
    candidate was judged), ``n_prompts_no_pair`` (judged, but no two scores ``min_gap`` apart: ties, one judged
    candidate, or only identical texts), ``n_pairs_before_cap``, ``n_pairs_before_balance``, ``n_pairs``,
    ``length_balance_r`` (None when balancing is off or nothing was kept), ``mean_len_chosen`` and
    ``mean_len_rejected`` (words, over the final pairs; None when there are none).
    """
    out = Path(out)
    config = cfg.model_dump(mode="json")
    inputs = _input_fingerprint(prompts, candidates, verdicts)
    done = _finished_summary(out, config, inputs)
    if done is not None:
        return done
    _remove_leftovers(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        summary = _build_into(tmp, prompts, candidates, verdicts, cfg)
        write_json(tmp / INPUTS_FILE, inputs)
        write_json(tmp / SUMMARY_FILE, summary)
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def _build_into(
    root: Path,
    prompts: ShardedStore[Prompt],
    candidates: ShardedStore[Candidate],
    verdicts: ShardedStore[Verdict],
    cfg: PairsConfig,
) -> dict[str, Any]:
    """Compute and write both stores under ``root``; return the summary."""
    scored = score_candidates(verdicts.read())
    scores_store = ShardedStore(root / "scores", Scored)
    with scores_store.writer() as writer:
        for record in scored:
            writer.add(record)
    scored_by_prompt: dict[str, list[Scored]] = defaultdict(list)
    for record in scored:
        scored_by_prompt[record.prompt_id].append(record)
    texts, policies = _candidate_texts(candidates, scored_by_prompt.keys())

    pairs: list[Pair] = []
    counts = {"n_prompts": 0, "n_prompts_unscored": 0, "n_prompts_no_pair": 0, "n_pairs_before_cap": 0}
    for prompt in prompts.read():
        counts["n_prompts"] += 1
        mine = scored_by_prompt.pop(prompt.prompt_id, [])
        if not mine:
            counts["n_prompts_unscored"] += 1
            continue
        prompt_texts = texts.get(prompt.prompt_id, {})
        counts["n_pairs_before_cap"] += len(eligible_pairs(mine, prompt_texts, cfg.min_gap, cfg.keep_accepted))
        meta = {"policy": ",".join(sorted(policies[prompt.prompt_id]))}
        found = pairs_for_prompt(prompt, mine, prompt_texts, cfg, meta)
        counts["n_prompts_no_pair"] += not found
        pairs.extend(found)
    if scored_by_prompt:
        raise ValueError(f"verdicts for prompts missing from {prompts!r}: {sorted(scored_by_prompt)[:5]}")

    kept, r = length_balance(pairs) if cfg.length_balance else (pairs, None)
    pair_store = ShardedStore(root / "pairs", Pair)
    with pair_store.writer() as writer:
        for pair in kept:
            writer.add(pair)
    pair_store.write_config(cfg.model_dump(mode="json"))
    return {
        **counts,
        "n_scored": len(scored),
        "n_pairs_before_balance": len(pairs),
        "n_pairs": len(kept),
        "length_balance_r": r,
        "mean_len_chosen": _mean_words(p.chosen for p in kept),
        "mean_len_rejected": _mean_words(p.rejected for p in kept),
    }


def _candidate_texts(
    candidates: ShardedStore[Candidate], prompt_ids: Iterable[str]
) -> tuple[dict[str, dict[int, str]], dict[str, set[str]]]:
    """Texts (by prompt, then sample index) and policies of the candidates of the given prompts only."""
    wanted = set(prompt_ids)
    texts: dict[str, dict[int, str]] = defaultdict(dict)
    policies: dict[str, set[str]] = defaultdict(set)
    for candidate in candidates.read():
        if candidate.prompt_id in wanted:
            texts[candidate.prompt_id][candidate.sample_idx] = candidate.text
            policies[candidate.prompt_id].add(candidate.policy)
    return texts, policies


def _mean_words(texts: Iterable[str]) -> float | None:
    lengths = [n_words(t) for t in texts]
    return float(np.mean(lengths)) if lengths else None


def _input_fingerprint(*stores: ShardedStore[Any]) -> dict[str, list[list[Any]]]:
    """Shard names and sizes of each input store: a resumed upstream stage appends shards, which changes this."""
    return {str(store.root): [[p.name, p.stat().st_size] for p in store.shard_paths()] for store in stores}


def _finished_summary(out: Path, config: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any] | None:
    """The saved summary if ``out`` holds a result of this config built from these inputs, else None."""
    pair_store = ShardedStore(out / "pairs", Pair)
    summary_path, inputs_path = out / SUMMARY_FILE, out / INPUTS_FILE
    if not (pair_store.config_path.is_file() and summary_path.is_file() and inputs_path.is_file()):
        return None
    if pair_store.read_config() != config or json.loads(inputs_path.read_text(encoding="utf-8")) != inputs:
        return None
    try:  # a result whose shards are corrupt is rebuilt, never handed on
        pair_store.verify()
        ShardedStore(out / "scores", Scored).verify()
    except CorruptFile as exc:
        log(f"[yellow]{exc.path} is corrupt ({exc.why}): rebuilding {out}")
        return None
    return json.loads(summary_path.read_text(encoding="utf-8"))


def _remove_leftovers(out: Path) -> None:
    """Temp and old folders of a run killed mid-build or mid-swap (one writer per ``out`` at a time)."""
    if out.parent.is_dir():
        for pattern in (f".{out.name}.tmp-*", f".{out.name}.old-*"):
            for stale in out.parent.glob(pattern):
                shutil.rmtree(stale, ignore_errors=True)


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace ``out`` by ``tmp`` with renames: ``out`` is always either the old result, absent, or the new one.

    A folder cannot be renamed over a non-empty one, so the old result is first moved aside, then deleted.
    """
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    publish_dir(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
