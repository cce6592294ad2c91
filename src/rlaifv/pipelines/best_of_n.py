"""`rlaifv bon`: best-of-N with the aligned policy's own reward, end to end (move 4).

Stages, each resumable, under one output folder:

    OUT/prompts      Prompt records ingested from the user's file            (rlaifv.prompts)
    OUT/candidates   N samples per prompt, one prefill per prompt             (feedback.sample, the sampler model)
    OUT/bon          one BonRow per prompt: every candidate's scores and the chosen one   (infer.bon)
    OUT/best.jsonl   the chosen answers: {"id", "question", "image", "response", "sample_idx", "reward", "n_tokens"}
                     plus the prompt's meta (so an image_id column of the prompts file reaches `rlaifv eval chair`)
    OUT/best.parquet the same rows (meta as JSON text)
    OUT/summary.json counts, mean rewards, how often each sample index was chosen

A rerun into a folder made with another config is refused (store.bind_config on OUT/bon), since it would mix two
runs' answers; `force_config` continues it deliberately.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlaifv.config import BonConfig, SampleConfig
from rlaifv.engines.base import LoadedOnUse
from rlaifv.feedback.sample import run_sample
from rlaifv.files import write_json
from rlaifv.infer.bon import STAGE, Scorer, export_best, load_scorer, run_bon, summarize
from rlaifv.lock import hold
from rlaifv.pipelines.collect import load_engine
from rlaifv.progress import log
from rlaifv.prompts import ingest_prompts, load_image
from rlaifv.records import BonRow, Candidate, Prompt
from rlaifv.store import ShardedStore


def bon_stores(out: Path, shard_size: int = 1000, force_config: bool = False) -> dict[str, ShardedStore]:
    """The stores under a best-of-N output folder."""
    out = Path(out)
    return {
        "prompts": ShardedStore(out / "prompts", Prompt, shard_size),
        "candidates": ShardedStore(out / "candidates", Candidate, shard_size, force_config=force_config),
        "bon": ShardedStore(out / "bon", BonRow, shard_size, stage=STAGE, force_config=force_config),
    }


def sample_config(cfg: BonConfig) -> SampleConfig:
    """The sampling stage's settings: the sampler (default: the policy) and the decoding setting."""
    sampler = cfg.sampler if cfg.sampler.path or cfg.sampler.kind != "hf" else cfg.policy
    return SampleConfig(policy=sampler, n=cfg.n,
                        temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                        prompts_per_batch=cfg.prompts_per_batch, seed=cfg.seed)


def _unfinished(prompts: ShardedStore[Prompt], done: set[str]) -> int:
    """Prompts with no stored or quarantined best-of-N record: 0 means the scorers need not load."""
    return sum(1 for p in prompts.read() if p.prompt_id not in done)


def best_of_n(out: Path, cfg: BonConfig, prompts: Path | None = None, force_config: bool = False) -> dict[str, Any]:
    """Ingest the prompts (once), sample N answers per prompt, score them, keep the best; resumable at every stage.
    Writes OUT/best.jsonl, OUT/best.parquet and OUT/summary.json; returns the summary. A folder made with another
    config is refused unless `force_config`."""
    for role in cfg.required_roles():
        if not cfg.names(role):
            raise ValueError(f"best-of-N with reward {cfg.reward!r} needs a {role} model: set --{role} (or "
                             f"{role}.path in the config)")
    out = Path(out)
    with hold(out):  # one writer; what a killed run left half-written is removed
        return _best_of_n(out, cfg, prompts, force_config)


def _best_of_n(out: Path, cfg: BonConfig, prompts: Path | None, force_config: bool) -> dict[str, Any]:
    s = bon_stores(out, cfg.shard_size, force_config)
    s["bon"].check_config(cfg)  # before anything is written; the sampling stage's config follows from this one
    if prompts is not None:
        ingest_prompts(Path(prompts), s["prompts"])
    elif not s["prompts"].shard_paths():
        raise ValueError(f"no prompts stored in {out} yet: pass --prompts the first time")
    s["bon"].bind_config(cfg)
    scfg = sample_config(cfg)
    engine = LoadedOnUse(lambda: load_engine(scfg.policy, None, "sampler"))  # not loaded if every answer is stored
    log(f"best-of-{cfg.n}: answers sampled by {scfg.policy.name}, those stored kept")
    run_sample(s["prompts"], s["candidates"], scfg, engine, load_image)
    counts = {"done": 0, "skipped": len(s["bon"].done_keys()), "quarantined": 0}
    if _unfinished(s["prompts"], s["bon"].done_keys()):
        if engine.loaded and scfg.policy == cfg.policy and cfg.policy.kind == "hf":  # keep it loaded
            policy = Scorer.from_model(engine.engine.model, engine.engine.processor, cfg.policy.path, cfg.max_length)
        else:
            policy = load_scorer(cfg.policy, cfg.max_length)
        del engine
        reference = load_scorer(cfg.reference, cfg.max_length) if cfg.names("reference") else None
        counts = run_bon(s["prompts"], s["candidates"], s["bon"], cfg, policy, reference, load_image,
                         sampler=scfg.policy.name)
        counts["fast_paths"] = {role: scorer.fast_paths() for role, scorer in
                                (("policy", policy), ("reference", reference)) if scorer is not None}
    export_best(s["bon"], s["prompts"], out / "best.jsonl", out / "best.parquet")
    summary = summarize(out, s["bon"], s["prompts"]) | {"this_run": counts}
    write_json(out / "summary.json", summary)
    return summary
