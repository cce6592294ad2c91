"""Move 2b, conquer: the labeler VLM answers each claim's yes/no question about the image.

The verdict is read from one next-token distribution (P_yes and P_no summed over the tokenizer's spellings); a
claim is accepted iff P_yes > P_no, so a tie rejects. A response's score is -(rejected claims), computed from the
verdicts when pairs are built.

Speed: one prompt's image is asked about every claim of every one of its N responses -- often 50-100 questions.
Two things keep that cheap, and neither changes a verdict:
- each distinct question of a prompt is asked once: N samples of one image repeat one another's claims ("Is there
  a red fork on the left?" in most of them), and a question about the same image has one answer;
- with `shared_prefix` the image and chat header are encoded once per packed row and the questions follow it
  behind a block mask (engines.packing); the result equals one forward per question.

`holistic` mode asks one question about the whole response instead, for the paper's ablation.

A claim the labeler cannot answer is quarantined with its reason, never given a verdict: an empty statement (in
holistic mode, an empty response, which the claims stage would have set aside), an image that no longer loads, a
server's refusal, or probabilities that are not numbers (a NaN or an infinity from the labeler's logits).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import TypeVar

from PIL import Image

from rlaifv.config import JudgeConfig
from rlaifv.engines.base import VLM
from rlaifv.progress import progress
from rlaifv.records import BadInput, Candidate, Claim, Prompt, Verdict
from rlaifv.store import ShardedStore

A = TypeVar("A")  # an engine's answer to one question

EMPTY_RESPONSE = "empty response"  # holistic mode: the claim is the whole response, and it says nothing
EMPTY_CLAIM = "empty claim (no statement to judge)"

# The holistic question: the whole response in one yes/no.
HOLISTIC_QUESTION = 'Here is a description of the image: "{response}" Is everything in this description correct?'


def holistic_claims(candidates: list[Candidate], suffix: str) -> list[Claim]:
    """One claim per response: the whole response, asked about at once."""
    out = []
    for c in candidates:
        question = HOLISTIC_QUESTION.format(response=c.text.strip())
        out.append(Claim(c.prompt_id, c.sample_idx, 0, c.text, f"{question} {suffix}".strip()))
    return out


def ask_each_once(
    groups: list[tuple[Image.Image, list[str]]], ask: Callable[[list[tuple[Image.Image, list[str]]]], list[list[A]]]
) -> tuple[list[list[A]], int]:
    """`ask`'s answers for every question of every (image, questions) group, each distinct question of a group
    asked once (in first-seen order) and its answer given to every repeat; also how many questions were asked."""
    distinct = [(image, list(dict.fromkeys(qs))) for image, qs in groups]
    rows = ask(distinct) if distinct else []
    answers = [[dict(zip(unique, row))[q] for q in qs] for (_, qs), (_, unique), row in zip(groups, distinct, rows)]
    return answers, sum(len(unique) for _, unique in distinct)


def run_judge(
    prompts: ShardedStore[Prompt],
    claims: list[Claim],
    out: ShardedStore[Verdict],
    cfg: JudgeConfig,
    engine: VLM,
    load_image: Callable[[Prompt], Image.Image],
) -> dict:
    """Verdicts for every claim not yet judged; one prompt's verdicts are written as one unit."""
    out.bind_config(cfg)  # a rerun with another config is refused, not mixed into the stored records
    by_prompt: dict[str, list[Claim]] = defaultdict(list)
    blank = [c for c in claims if not c.statement.strip()]
    for c in claims:
        if c.statement.strip():
            by_prompt[c.prompt_id].append(c)
    todo = [p for p in prompts.read() if p.prompt_id in by_prompt]
    done = skipped = asked = quarantined = 0
    with out.writer() as writer, progress("judging claims", sum(len(by_prompt[p.prompt_id]) for p in todo)) as bar:
        for c in blank:  # nothing to judge: a verdict on it would score an empty answer like a checked one
            if c.key in writer:
                skipped += 1
            else:
                writer.quarantine(c.key, EMPTY_RESPONSE if cfg.mode == "holistic" else EMPTY_CLAIM, c)
                quarantined += 1
        for lo in range(0, len(todo), cfg.prompts_per_batch):
            # A batch is a fixed unit of compute: after a crash it is recomputed whole (only what is missing is
            # written), so a resumed run packs and pads exactly as an uninterrupted one and gets the same floats.
            prompts_here = todo[lo : lo + cfg.prompts_per_batch]
            n_here = sum(len(by_prompt[p.prompt_id]) for p in prompts_here)
            if all(c.key in writer for p in prompts_here for c in by_prompt[p.prompt_id]):
                skipped += n_here
                bar.advance(n_here)
                continue
            batch = []
            for p in prompts_here:
                mine = by_prompt[p.prompt_id]
                try:
                    batch.append((load_image(p), mine))
                except BadInput as exc:
                    for c in mine:
                        if c.key not in writer:
                            writer.quarantine(c.key, str(exc), c)
                            quarantined += 1
            groups = [(image, [c.question for c in mine]) for image, mine in batch]
            if cfg.shared_prefix:
                probs, n_asked = ask_each_once(
                    groups, lambda g: engine.yes_no_shared(g, cfg.questions_per_pack, cfg.packs_per_forward))
            else:
                probs, n_asked = ask_each_once(groups, lambda g: [engine.yes_no([im] * len(qs), qs) for im, qs in g])
            asked += n_asked
            for (_, mine), row in zip(batch, probs):
                verdicts = []
                for c, answer in zip(mine, row):
                    if c.key in writer:
                        skipped += 1
                        continue
                    if isinstance(answer, BadInput):
                        writer.quarantine(c.key, f"labeler refused the claim: {answer}", c)
                        quarantined += 1
                        continue
                    p_yes, p_no = answer
                    if not (math.isfinite(p_yes) and math.isfinite(p_no)):
                        writer.quarantine(c.key, f"labeler returned non-finite probabilities ({p_yes}, {p_no})", c)
                        quarantined += 1
                    else:
                        verdicts.append(Verdict.from_probs(c.prompt_id, c.sample_idx, c.claim_idx, p_yes, p_no,
                                                           c.support))
                writer.add_unit(verdicts)
                done += len(verdicts)
            bar.advance(n_here, status=f"{done} verdicts from {asked} questions")
    # `asked`: distinct questions sent to the labeler by this run (claims repeated across samples are asked once)
    return {"done": done, "skipped": skipped, "quarantined": quarantined, "asked": asked,
            "fast_paths": engine.fast_paths()}
