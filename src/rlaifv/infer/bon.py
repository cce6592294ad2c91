"""Move 4, self-feedback at inference: best-of-N ranked by the aligned policy's own reward (REFERENCE 6).

A DPO-aligned policy carries a reward model inside it: r(y) = beta * log(pi(y | x) / pi_ref(y | x)). Best-of-N draws
N answers per prompt and keeps the one this reward ranks first, with no labeler at inference. The summed form prefers
short answers, so the paper divides by the answer's tokens T:

    r(y) = (beta / T) * sum_t [log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)]      ('mean'; 'sum' drops the 1/T)

A third form needs no reference: the aligned policy's own mean log-prob per token,

    r(y) = (1 / T) * sum_t log pi(y_t | x, y_<t)                                         ('likelihood')

which ranks like the implicit reward against a uniform reference (log pi_ref = -log V on every token). Why it is
there: on the synthetic world the log-ratio ranks the policy's own samples by their truth no better than chance. DPO
moves the policy's probability of a few decision tokens (whether to add an invented object) and, on the other
tokens, raises rare continuations relative to the reference -- a wrong colour gains more log-ratio than the right
one -- so the mean over an answer's tokens is mostly that noise. The policy's likelihood keeps the decision tokens'
penalty and not the noise (benchmarks/RESULTS.md, "Which reward ranks best-of-N answers"). The world's demo uses
it; `rlaifv bon` keeps the paper's form unless asked (`--reward likelihood`).

This module scores sampled candidates and keeps the best (`run_bon`, one `records.BonRow` per prompt: all N texts, both
models' log-prob sums, token counts, rewards, the reason each unscorable candidate was set aside, the chosen index
and text; a prompt with no scorable candidate is quarantined with the reasons), and writes the chosen answers
(`export_best`) and the counts (`summarize`). Ingesting prompts and sampling the candidates is the pipeline's
(`rlaifv.pipelines.best_of_n`, `rlaifv bon`).

Scoring encodes each prompt's image and text once per model and packs its candidates behind it
(logps.packed.group_logps, the trainer's shared-prefix computation with k responses). The candidates are tokenized
the way logps.encode tokenizes DPO pairs -- the response as the model reads it after the chat template's prompt,
end-of-turn token included -- so the reward is the one the policy's DPO loss optimised. Identical candidates are
scored once, so their rewards are equal and the tie goes to the lowest sample index, as every tie does. A policy or
reference of kind 'openai' is scored on its vLLM server through prompt logprobs, with the same tokens
(ServedScorer; docs/scale-out.md).
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from rlaifv.config import BON_REWARDS, BonConfig, EngineConfig
from rlaifv.engines.family import family_of, vision_of
from rlaifv.engines.fastpath import report
from rlaifv.engines.loading import load_vlm
from rlaifv.files import atomic_write, write_text
from rlaifv.infer.reward import implicit_reward
from rlaifv.logps.encode import PairEncoder, context_length
from rlaifv.logps.packed import ResponseGroup, group_logps
from rlaifv.preferences import PreferenceExample
from rlaifv.progress import progress
from rlaifv.records import BadInput, BonRow, Candidate, Prompt, ResponseScore, reason_counts
from rlaifv.store import SetAside, ShardedStore, run_in_batches

STAGE = "bon"
EMPTY = "empty response"


# -- rewards and the choice ----------------------------------------------------------------------------------------


def rewards_of(policy_logps: Sequence[float], ref_logps: Sequence[float | None], n_tokens: Sequence[int], beta: float,
               kind: str) -> list[float]:
    """r per candidate: beta * (log pi - log pi_ref), divided by the tokens for kind 'mean' (infer.reward); for kind
    'likelihood' log pi divided by the tokens (`ref_logps` unread, `beta` unused: it scales nothing it ranks)."""
    if kind not in BON_REWARDS:
        raise ValueError(f"reward must be one of {', '.join(BON_REWARDS)}, got {kind!r}")
    pol = torch.tensor(policy_logps, dtype=torch.float64)  # (N,)
    if kind == "likelihood":
        return (pol / torch.tensor(n_tokens, dtype=torch.float64)).tolist()
    ref = torch.tensor(ref_logps, dtype=torch.float64)  # (N,)
    tokens = torch.tensor(n_tokens, dtype=torch.float64) if kind == "mean" else None  # (N,)
    return implicit_reward(pol, ref, beta, tokens).tolist()


def row_rewards(row: BonRow, kind: str) -> list[float | None]:
    """A stored row's rewards recomputed under form `kind` from its log-probs (None where an answer was not scored),
    so every form ranks the same candidates."""
    scored = [i for i, logp in enumerate(row.policy_logps) if logp is not None]
    values = iter(rewards_of([row.policy_logps[i] for i in scored], [row.ref_logps[i] for i in scored],
                             [row.n_tokens[i] for i in scored], row.beta, kind))
    return [next(values) if logp is not None else None for logp in row.policy_logps]


def choose(rewards: Sequence[float | None]) -> int | None:
    """Index of the highest reward, the lowest index among equals; None (unscored) and NaN never win. None when no
    candidate has a reward."""
    best = None
    for i, r in enumerate(rewards):
        if r is not None and not math.isnan(r) and (best is None or r > rewards[best]):
            best = i
    return best


# -- the models ------------------------------------------------------------------------------------------------------


class ResponseScorer(Protocol):
    """What scoring needs from a model, loaded here (Scorer) or served (ServedScorer)."""

    name: str

    def response_logps(self, items: list[tuple[Prompt, Image.Image, list[str]]],
                       cfg: BonConfig) -> list[list[ResponseScore]]: ...

    def fast_paths(self) -> dict[str, dict]: ...


def load_scorer(cfg: EngineConfig, max_length: int | None = None) -> ResponseScorer:
    """The scorer a role's config names: a model loaded here, or a server (kind 'openai')."""
    return ServedScorer.connect(cfg, max_length) if cfg.kind == "openai" else Scorer.load(cfg, max_length)


@dataclass
class ServedScorer:
    """A model on vLLM servers; answers are scored through prompt logprobs (engines.openai_vlm.response_logps)."""

    name: str
    engine: Any  # engines.openai_vlm.OpenAIEngine
    limit: int | None

    @classmethod
    def connect(cls, cfg: EngineConfig, max_length: int | None = None) -> ServedScorer:
        from rlaifv.engines.openai_vlm import OpenAIEngine

        return cls(cfg.name, OpenAIEngine(cfg), max_length)

    def fast_paths(self) -> dict[str, dict]:
        return self.engine.fast_paths()

    def response_logps(self, items: list[tuple[Prompt, Image.Image, list[str]]],
                       cfg: BonConfig) -> list[list[ResponseScore]]:
        from rlaifv.engines.openai_vlm import image_url, user_message

        return self.engine.response_logps([(user_message(image_url(image), p.question), texts)
                                           for p, image, texts in items], self.limit)


@dataclass
class Scorer:
    """A VLM that scores candidates: the model in eval mode, its processor, the longest prompt + answer allowed."""

    name: str
    model: Any
    processor: Any
    limit: int | None

    @classmethod
    def load(cls, cfg: EngineConfig, max_length: int | None = None) -> Scorer:
        model, processor = load_vlm(cfg.path, getattr(torch, cfg.dtype), torch.device(cfg.device),
                                    cfg.trust_remote_code)
        return cls.from_model(model, processor, cfg.path, max_length)

    @classmethod
    def from_model(cls, model: Any, processor: Any, name: str = "in-memory", max_length: int | None = None) -> Scorer:
        """Around a model already in memory (the sampling engine's, a benchmark's)."""
        limits = [x for x in (max_length, context_length(model.config)) if x is not None]
        family_of(model)  # refuses a family whose answers cannot be scored as continuations
        return cls(name, model.eval(), processor, min(limits) if limits else None)

    def fast_paths(self) -> dict[str, dict]:
        return report(self.model)

    @property
    def pad_id(self) -> int:
        tok = self.processor.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def encode(self, prompt: Prompt, image: Image.Image, texts: Sequence[str]) -> tuple[ResponseGroup, list[str]]:
        """The prompt's ids and image inputs, every answer's ids, and per answer "" or why it cannot be scored
        (empty, or prompt + answer longer than `limit`); a set-aside answer's ids are kept for its token count.

        BadInput when the processor rejects the prompt."""
        encoder = PairEncoder(self.processor, self.limit)
        prompt_text, fulls = encoder.rendered(PreferenceExample("", prompt, "", ""), texts)
        try:
            enc = self.processor(text=[prompt_text], images=[image], return_tensors="pt")
        except ValueError as exc:
            raise BadInput(f"processor rejected the prompt: {exc}") from None
        prefix = enc["input_ids"][0].tolist()
        raw_prompt = self.processor.tokenizer(prompt_text)["input_ids"]
        responses, reasons = [], []
        for text, full in zip(texts, fulls):
            ids = encoder.response_ids(raw_prompt, prompt_text, full)
            responses.append(ids)
            if not text.strip() or not ids:
                reasons.append(EMPTY)
            elif self.limit is not None and len(prefix) + len(ids) > self.limit:
                reasons.append(f"too long: prompt {len(prefix)} + response {len(ids)} = {len(prefix) + len(ids)} "
                               f"tokens > {self.limit} (the model's context or max_length)")
            else:
                reasons.append("")
        return ResponseGroup(prefix, responses, vision_of(enc)), reasons

    def response_logps(self, items: list[tuple[Prompt, Image.Image, list[str]]],
                       cfg: BonConfig) -> list[list[ResponseScore]]:
        """Per prompt, per answer: its summed log-prob, ids and "" -- or why it was set aside. Each prompt's image
        and text are encoded once per packed row of its answers (logps.packed.group_logps)."""
        groups, plans = [], []
        for prompt, image, texts in items:
            group, reasons = self.encode(prompt, image, texts)
            keep = [i for i, r in enumerate(reasons) if not r]
            if keep:
                groups.append(ResponseGroup(group.prefix_ids, [group.responses[i] for i in keep], group.vision))
            plans.append((group.responses, reasons, keep))
        sums = iter(group_logps(self.model, groups, self.pad_id, cfg.candidates_per_pack, cfg.packs_per_batch))
        out = []
        for responses, reasons, keep in plans:
            logps: list[float | None] = [None] * len(responses)
            for i, value in zip(keep, next(sums).tolist() if keep else []):
                logps[i] = value
            out.append([ResponseScore(lp, tuple(ids), r) for lp, ids, r in zip(logps, responses, reasons)])
        return out


# -- scoring -------------------------------------------------------------------------------------------------------


@dataclass
class PromptCandidates:
    """One prompt to score: its record, its sampled candidates and its image."""

    prompt: Prompt
    candidates: list[Candidate]  # in sample order
    image: Image.Image


def score_prompts(items: list[PromptCandidates], policy: ResponseScorer, reference: ResponseScorer | None,
                  cfg: BonConfig, sampler: str = "") -> list[BonRow | tuple[str, dict[str, Any]]]:
    """A BonRow per prompt, or (reason, row) for a prompt none of whose candidates can be scored. Each model scores
    each prompt's distinct answers once (identical answers share their numbers); a candidate either model sets
    aside keeps the first reason and is never chosen. Without a `reference` (a reward of config.BON_NO_REFERENCE
    only) every ref_logps entry is None."""
    distinct = [list(dict.fromkeys(c.text for c in item.candidates)) for item in items]
    scorers = (("policy", policy),) + ((("reference", reference),) if reference is not None else ())
    scored = {role: scorer.response_logps([(item.prompt, item.image, texts) for item, texts in zip(items, distinct)],
                                          cfg)
              for role, scorer in scorers}
    results: list[BonRow | tuple[str, dict[str, Any]]] = []
    for k, item in enumerate(items):
        texts = [c.text for c in item.candidates]
        at = {text: j for j, text in enumerate(distinct[k])}
        n = len(texts)
        pol_l: list[float | None] = [None] * n
        ref_l: list[float | None] = [None] * n
        rewards: list[float | None] = [None] * n
        reasons, tokens = [""] * n, [0] * n
        for i, text in enumerate(texts):
            sides = {role: scored[role][k][at[text]] for role in scored}  # the policy's, and the reference's if any
            pol = sides["policy"]
            tokens[i] = len(next((s.ids for s in sides.values() if s.ids), ()))  # a refused answer has no ids
            reasons[i] = next((s.reason for s in sides.values() if s.reason), "")
            if reasons[i]:
                continue
            if "reference" in sides and pol.ids != sides["reference"].ids:
                raise ValueError(f"the policy ({policy.name}) and the reference ({reference.name}) tokenize answer "
                                 f"{i} of prompt {item.prompt.prompt_id} differently; they must share a tokenizer")
            if not all(math.isfinite(s.logp) for s in sides.values()):
                reasons[i] = f"non-finite log-prob ({', '.join(f'{r} {s.logp}' for r, s in sides.items())})"
                continue
            pol_l[i], ref_l[i] = pol.logp, sides["reference"].logp if "reference" in sides else None
            rewards[i] = rewards_of([pol.logp], [ref_l[i]], [tokens[i]], cfg.beta, cfg.reward)[0]
        best = choose(rewards)
        row = {"prompt_id": item.prompt.prompt_id, "question": item.prompt.question, "image": item.prompt.image,
               "texts": texts, "policy_logps": pol_l, "ref_logps": ref_l, "n_tokens": tokens, "rewards": rewards,
               "reasons": reasons, "reward_kind": cfg.reward, "beta": cfg.beta, "sampler": sampler}
        if best is None:
            detail = "; ".join(f"sample {i}: {r}" for i, r in enumerate(reasons))
            results.append((f"no candidate can be scored: {detail}", row))
        else:
            results.append(BonRow(**row, chosen_idx=best, chosen_text=texts[best], chosen_reward=rewards[best]))
    return results


def run_bon(prompts: ShardedStore[Prompt], candidates: ShardedStore[Candidate], out: ShardedStore[BonRow],
            cfg: BonConfig, policy: ResponseScorer, reference: ResponseScorer | None,
            load_image: Callable[[Prompt], Image.Image] | None = None, sampler: str = "") -> dict[str, Any]:
    """Score the candidates of every prompt not yet in `out` and store the choice; returns counts.

    Prompts go in fixed batches of `cfg.prompts_per_batch` in store order; a batch with any prompt missing is
    recomputed whole and only the missing rows are written, so a resumed run pads and packs exactly as an
    uninterrupted one and stores the same floats. A prompt the sampling stage quarantined, or whose image no longer
    loads, is quarantined here too, with the reason.
    """
    if load_image is None:
        from rlaifv.prompts import load_image
    by_prompt: dict[str, list[Candidate]] = defaultdict(list)
    for c in candidates.read():
        by_prompt[c.prompt_id].append(c)
    not_sampled = {q.record_key: q.reason for q in candidates.read_quarantine()}
    todo = list(prompts.read())

    def prepare(p: Prompt) -> PromptCandidates:
        if p.prompt_id in not_sampled:
            raise BadInput(f"sampling: {not_sampled[p.prompt_id]}")
        found = sorted(by_prompt.get(p.prompt_id, []), key=lambda c: c.sample_idx)
        if not found:
            raise ValueError(f"prompt {p.prompt_id} has no candidates in {candidates.root}; run the sampling stage "
                             "first")
        return PromptCandidates(p, found, load_image(p))

    def to_records(p: Prompt, result: BonRow | tuple[str, dict[str, Any]]) -> list[BonRow] | SetAside:
        return [result] if isinstance(result, BonRow) else SetAside(*result)

    with out.writer() as writer, progress("best-of-N scoring", len(todo)) as bar, torch.no_grad():
        return run_in_batches(
            writer, todo, cfg.prompts_per_batch, pending=lambda p: p.prompt_id not in writer, prepare=prepare,
            compute=lambda batch, ready, items: score_prompts(items, policy, reference, cfg, sampler),
            to_records=to_records, quarantine_as=lambda p: (p.prompt_id, p.to_row() | {"image_bytes": None}),
            bar=bar, status=lambda counts: f"{counts['done']} prompts scored")


# -- outputs -------------------------------------------------------------------------------------------------------

BEST_SCHEMA = pa.schema([("id", pa.string()), ("question", pa.string()), ("image", pa.string()),
                         ("response", pa.string()), ("sample_idx", pa.int64()), ("reward", pa.float64()),
                         ("n_tokens", pa.int64()), ("meta", pa.string())])


def best_rows(bon: ShardedStore[BonRow], prompts: ShardedStore[Prompt] | None = None) -> list[dict[str, Any]]:
    """The chosen answer of every scored prompt, in store order: id, question, image, response, sample_idx, reward,
    n_tokens, plus the prompt's meta (e.g. an image_id column of the prompts file, which `rlaifv eval chair` reads)."""
    metas = {p.prompt_id: p.meta for p in prompts.read()} if prompts is not None else {}
    rows = []
    for r in bon.read():
        row = {"id": r.prompt_id, "question": r.question, "image": r.image, "response": r.chosen_text,
               "sample_idx": r.chosen_idx, "reward": r.chosen_reward, "n_tokens": r.n_tokens[r.chosen_idx]}
        rows.append({**metas.get(r.prompt_id, {}), **row})
    return rows


def export_best(bon: ShardedStore[BonRow], prompts: ShardedStore[Prompt] | None, jsonl: Path | None,
                parquet: Path | None = None) -> int:
    """Write the chosen answers as JSONL and/or Parquet (rebuilt whole, atomically); returns how many."""
    rows = best_rows(bon, prompts)
    keys = {f.name for f in BEST_SCHEMA}
    if jsonl is not None:
        text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True, default=str) + "\n" for r in rows)
        write_text(Path(jsonl), text)
    if parquet is not None:
        flat = [{k: r[k] for k in keys - {"meta"}} | {"meta": json.dumps({k: v for k, v in r.items() if k not in keys},
                                                                          sort_keys=True, default=str)} for r in rows]
        table = pa.Table.from_pylist(flat, schema=BEST_SCHEMA)
        atomic_write(Path(parquet), lambda tmp: pq.write_table(table, tmp))
    return len(rows)


def summarize(out: Path, bon: ShardedStore[BonRow], prompts: ShardedStore[Prompt]) -> dict[str, Any]:
    """Counts over the whole store (not just this run): prompts scored and quarantined, candidates set aside by
    reason, mean chosen and mean candidate reward and length, and how often each sample index won."""
    rows = bon.read_all()
    quarantined = bon.read_quarantine()
    set_aside = reason_counts(r for row in rows for r in row.reasons if r)
    scored = [x for row in rows for x in row.rewards if x is not None]
    chosen_tokens = [row.n_tokens[row.chosen_idx] for row in rows]
    all_tokens = [t for row in rows for t, reason in zip(row.n_tokens, row.reasons) if not reason]

    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    return {
        "out": str(out), "best": str(Path(out) / "best.jsonl"), "prompts": len(prompts), "scored": len(rows),
        "quarantined": len(quarantined),
        "quarantine_reasons": reason_counts(q.reason for q in quarantined),
        "candidates_set_aside": set_aside,
        "reward": rows[0].reward_kind if rows else None,
        "mean_chosen_reward": mean([row.chosen_reward for row in rows]), "mean_candidate_reward": mean(scored),
        "mean_chosen_tokens": mean(chosen_tokens), "mean_candidate_tokens": mean(all_tokens),
        "chosen_index_counts": {str(k): v for k, v in sorted(Counter(row.chosen_idx for row in rows).items())},
    }
