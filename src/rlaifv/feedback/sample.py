"""Move 1, deconfounded sampling: N responses per prompt from the current policy, all with one decoding setting.

Because every response to a prompt comes from the same model with the same temperature and top-p, two responses
differ in what they say, not in how they say it -- so a preference between them teaches content (fewer
hallucinations), not style. Prompts go in batches whose images and instructions are prefilled once; the N samples
decode from that shared prefix (engines.hf.HFEngine.sample).

Resume: a batch is a fixed group of prompts with a seed derived from the stage seed and the batch's prompt ids, so
recomputing an interrupted batch gives the same samples, and only the prompts not yet stored are written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from PIL import Image

from rlaifv.config import SampleConfig
from rlaifv.engines.base import VLM, Sampling
from rlaifv.progress import progress
from rlaifv.records import BadInput, Candidate, Prompt
from rlaifv.store import ShardedStore, run_in_batches


def batch_seed(seed: int, prompt_ids: list[str]) -> int:
    """A 63-bit seed for one batch, from the stage seed and the batch's prompt ids (never Python's hash())."""
    payload = "\x00".join([str(seed), *prompt_ids]).encode()
    return int.from_bytes(hashlib.sha256(payload).digest()[:8], "big") >> 1


def sampling_of(cfg: SampleConfig) -> Sampling:
    return Sampling(max_new_tokens=cfg.max_new_tokens, do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p)


def candidate_keys(prompt_id: str, n: int) -> list[str]:
    return [Candidate.key_of({"prompt_id": prompt_id, "sample_idx": i}) for i in range(n)]


def run_sample(
    prompts: ShardedStore[Prompt],
    out: ShardedStore[Candidate],
    cfg: SampleConfig,
    engine: VLM,
    load_image: Callable[[Prompt], Image.Image],
) -> dict:
    """Sample cfg.n candidates for every prompt not yet done; returns counts for the stage summary."""
    out.bind_config(cfg)  # a rerun with another config is refused, not mixed into the stored records
    todo = list(prompts.read())
    sampling = sampling_of(cfg)
    setting = {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens}

    def draw(batch: list[Prompt], ready: list[Prompt], images: list[Image.Image]) -> list:
        # the seed comes from the whole batch, so a prompt's samples do not depend on which others were done
        seed = batch_seed(cfg.seed, [p.prompt_id for p in batch])
        return [(seed, s) if not isinstance(s, BadInput) else s
                for s in engine.sample(images, [p.question for p in ready], cfg.n, sampling, seed=seed)]

    def candidates(p: Prompt, answer: tuple[int, list[tuple[str, int]]]) -> list[Candidate]:
        seed, samples = answer
        return [Candidate(p.prompt_id, i, text, n_tokens, engine.path, setting, seed)
                for i, (text, n_tokens) in enumerate(samples)]

    with out.writer() as writer, progress("sampling", len(todo)) as bar:
        counts = run_in_batches(
            writer, todo, cfg.prompts_per_batch, pending=lambda p: not _is_done(writer, p.prompt_id, cfg.n),
            prepare=load_image, compute=draw, to_records=candidates, refused="sampling refused: ",
            quarantine_as=lambda p: (p.prompt_id, p.to_row() | {"image_bytes": None}),
            bar=bar, status=lambda c: f"{c['done']} prompts sampled")
    return {**counts, "fast_paths": engine.fast_paths()}


def _is_done(writer, prompt_id: str, n: int) -> bool:
    """Stored (all n candidates; units are written whole) or quarantined."""
    return prompt_id in writer or candidate_keys(prompt_id, n)[0] in writer
