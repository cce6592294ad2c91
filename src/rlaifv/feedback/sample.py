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
from typing import Protocol

from PIL import Image

from rlaifv.config import SampleConfig
from rlaifv.engines.fastpath import engine_report
from rlaifv.engines.hf import Sampling
from rlaifv.progress import progress
from rlaifv.records import BadInput, Candidate, Prompt
from rlaifv.store import ShardedStore


class Sampler(Protocol):
    """What the stage needs from an engine (engines.hf.HFEngine and engines.openai_vlm.OpenAIEngine provide it).
    A prompt's entry is BadInput where the engine refused that prompt alone (a server's 4xx answer)."""

    path: str

    def sample(
        self, images: list[Image.Image], questions: list[str], n: int, sampling: Sampling, seed: int | None = None
    ) -> list[list[tuple[str, int]] | BadInput]: ...


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
    engine: Sampler,
    load_image: Callable[[Prompt], Image.Image],
) -> dict:
    """Sample cfg.n candidates for every prompt not yet done; returns counts for the stage summary."""
    out.bind_config(cfg)  # a rerun with another config is refused, not mixed into the stored records
    todo = list(prompts.read())
    sampling = sampling_of(cfg)
    setting = {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens}
    done = skipped = 0
    with out.writer() as writer, progress("sampling", len(todo)) as bar:
        for lo in range(0, len(todo), cfg.prompts_per_batch):
            batch = todo[lo : lo + cfg.prompts_per_batch]
            missing = [p for p in batch if not _is_done(writer, p.prompt_id, cfg.n)]
            skipped += len(batch) - len(missing)
            if not missing:
                bar.advance(len(batch))
                continue
            seed = batch_seed(cfg.seed, [p.prompt_id for p in batch])
            ready, images = [], []
            for p in batch:
                try:
                    images.append(load_image(p))
                    ready.append(p)
                except BadInput as exc:
                    if p in missing:
                        writer.quarantine(p.prompt_id, str(exc), p.to_row() | {"image_bytes": None})
            if ready:
                results = engine.sample(images, [p.question for p in ready], cfg.n, sampling, seed=seed)
                for p, samples in zip(ready, results):
                    if p not in missing:
                        continue
                    if isinstance(samples, BadInput):
                        writer.quarantine(p.prompt_id, f"sampling refused: {samples}",
                                          p.to_row() | {"image_bytes": None})
                        continue
                    writer.add_unit([
                        Candidate(p.prompt_id, i, text, n_tokens, engine.path, setting, seed)
                        for i, (text, n_tokens) in enumerate(samples)
                    ])
                    done += 1
            bar.advance(len(batch), status=f"{done} prompts sampled")
    return {"done": done, "skipped": skipped, "fast_paths": engine_report(engine)}


def _is_done(writer, prompt_id: str, n: int) -> bool:
    """Stored (all n candidates; units are written whole) or quarantined."""
    return prompt_id in writer or candidate_keys(prompt_id, n)[0] in writer
