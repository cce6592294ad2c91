"""`rlaifv collect`: the feedback engine end to end -- prompts -> candidates -> claims -> verdicts -> pairs.

Each stage reads the previous stage's store and writes its own under the output folder:

    OUT/prompts      Prompt records ingested from the user's file (bad rows quarantined)
    OUT/candidates   N sampled responses per prompt               (feedback.sample)
    OUT/claims       statements and yes/no questions per response (feedback.claims; not in holistic mode)
    OUT/verdicts     the labeler's P_yes / P_no per claim          (feedback.judge)
    OUT/preferences  scores and pairs, rebuilt whole when inputs change (feedback.pairs)
    OUT/summary.json per-stage counts, quarantine reasons, the settings that differ from the paper's and, for world
                     prompts, feedback precision; OUT/report.md says the same for people

Every stage resumes where it stopped, so rerunning the same command after a crash finishes the job; a shard found
corrupt is recomputed by the rerun of the stage that wrote it (`rlaifv.store`). One process at a time writes the
folder (rlaifv.lock): a second one is refused. Models left
empty in the config are the synthetic world's (bootstrapped or taken from the cache), and only for world prompts:
for any other prompts an empty model is an error that names the option to set (`missing_models`), never the world's
tiny model answering about a user's images.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

from rlaifv.config import CollectConfig, EngineConfig, format_deviation, paper_deviations
from rlaifv.engines.base import LoadedOnUse
from rlaifv.files import write_json, write_text
from rlaifv.lock import hold
from rlaifv.preferences import PREFERENCES, pair_store
from rlaifv.progress import log
from rlaifv.records import Candidate, Claim, Pair, Prompt, Verdict, reason_counts
from rlaifv.store import ShardedStore
from rlaifv.world.config import WorldConfig


def stores(out: Path, shard_size: int = 1000, force_config: bool = False) -> dict[str, ShardedStore]:
    """The stores under a collect folder; `force_config` lets a stage continue one made with another config."""
    return {
        "prompts": ShardedStore(out / "prompts", Prompt, shard_size),
        "candidates": ShardedStore(out / "candidates", Candidate, shard_size, force_config=force_config),
        "claims": ShardedStore(out / "claims", Claim, shard_size, force_config=force_config),
        "verdicts": ShardedStore(out / "verdicts", Verdict, shard_size, force_config=force_config),
    }


STAGE_STORES = {"sample": "candidates", "claims": "claims", "judge": "verdicts"}  # the stages bound to a config


def check_configs(out: Path, cfg: CollectConfig, stages: list[str], force_config: bool = False) -> None:
    """Refuse, before anything runs or loads, a rerun whose stages' stores were made with another config
    (store.ConfigChanged names what differs); each stage binds its config again when it opens its store."""
    s = stores(out, cfg.shard_size, force_config)
    for stage in stages:
        if stage in STAGE_STORES and not (stage == "claims" and cfg.judge.mode == "holistic"):
            s[STAGE_STORES[stage]].check_config(getattr(cfg, stage))


def load_engine(cfg: EngineConfig, default_path: str | Path | None, role: str):
    """The engine a role's config names: a model loaded here (kind 'hf'; `default_path` when `path` is empty) or
    a client of OpenAI-compatible servers (kind 'openai')."""
    if cfg.kind == "openai":
        from rlaifv.engines.openai_vlm import OpenAIEngine

        return OpenAIEngine(cfg)
    import torch

    from rlaifv.engines.hf import HFEngine

    path = cfg.path or default_path
    if not path:
        raise ValueError(f"no model for the {role}: set {role}.path in the config")
    return HFEngine(path, cfg.device, getattr(torch, cfg.dtype), cfg.trust_remote_code)


# each model role of collection: the stage that loads it, its command-line option and its config field
MODEL_ROLES = {
    "policy": ("sample", "--policy", "sample.policy.path"),
    "labeler": ("judge", "--labeler", "judge.labeler.path"),
    "splitter": ("claims", "--splitter-model", "claims.splitter_model.path"),
}


def missing_models(cfg: CollectConfig, stages: list[str] | tuple[str, ...]) -> list[str]:
    """The roles ('policy', 'labeler', 'splitter') that `stages` would load and the config leaves empty: on prompts
    other than the world's, each is an error (`no_world_models`)."""
    engines = {"policy": cfg.sample.policy, "labeler": cfg.judge.labeler, "splitter": cfg.claims.splitter_model}
    needed = {"policy": "sample" in stages, "labeler": "judge" in stages,
              "splitter": "claims" in stages and cfg.judge.mode == "claims" and cfg.claims.splitter == "llm"}
    return [role for role, engine in engines.items()
            if needed[role] and engine.kind == "hf" and not engine.path]


def no_world_models(roles: list[str], what: str, prefix: str = "") -> str:
    """The error for empty models on prompts that are not the world's, naming each option and config field."""
    options = ", ".join(MODEL_ROLES[r][1] for r in roles)
    fields = ", ".join(prefix + MODEL_ROLES[r][2] for r in roles)
    return (f"{what} are not world prompts, so the world's tiny models are not used for them: pass {options} "
            f"(or set {fields} in the config)")


def _world_model(role: str, world: WorldConfig | None, cfg: EngineConfig,
                 prompts: ShardedStore[Prompt]) -> Callable[[], Path | None]:
    """The world's model for a role ('policy', 'labeler', 'splitter') that the config leaves empty, as a function
    that bootstraps it (or takes it from the cache) when a stage first needs the model; it returns None when `cfg`
    names a model or a server. That every stored prompt is a world scene is checked now, so a stage that would
    answer a user's prompts with the world's tiny model fails before any work, whether or not it has any left."""
    if cfg.path or cfg.kind != "hf":
        return lambda: None
    from rlaifv.prompts import stored_prompts_are_world

    if not stored_prompts_are_world(prompts):
        raise ValueError(no_world_models([role], f"the prompts in {prompts.root}"))

    def bootstrapped() -> Path:
        from rlaifv.world.bootstrap import bootstrap

        return getattr(bootstrap(world or WorldConfig()), role)

    return bootstrapped


def run_stage(stage: str, prompts_file: Path | None, out: Path, cfg: CollectConfig,
              world: WorldConfig | None = None, force_config: bool = False, rows: list[int] | None = None) -> dict:
    """Run one stage ('prompts', 'sample', 'claims', 'judge' or 'pairs') on the output folder. A stage whose store
    was made with another config is refused before its model loads, unless `force_config`. `rows`: the prompts
    stage ingests only these rows of the file (a round's slice)."""
    with hold(out):
        return _run_stage(stage, prompts_file, out, cfg, world, force_config, rows)


def _run_stage(stage: str, prompts_file: Path | None, out: Path, cfg: CollectConfig, world: WorldConfig | None,
               force_config: bool, rows: list[int] | None) -> dict:
    from rlaifv.prompts import ingest_prompts, load_image

    check_configs(out, cfg, [stage], force_config)
    s = stores(out, cfg.shard_size, force_config)
    if stage == "prompts":
        if prompts_file is None:
            raise ValueError("the prompts stage needs a prompts file")
        return ingest_prompts(prompts_file, s["prompts"], rows)
    if stage == "sample":
        from rlaifv.feedback.sample import run_sample

        default = _world_model("policy", world, cfg.sample.policy, s["prompts"])
        engine = LoadedOnUse(lambda: load_engine(cfg.sample.policy, default(), "sample.policy"))
        return _noted_if_unloaded(run_sample(s["prompts"], s["candidates"], cfg.sample, engine, load_image), engine)
    if stage == "claims":
        if cfg.judge.mode == "holistic":
            return {"done": 0, "skipped": 0, "note": "holistic mode judges whole responses; no claims"}
        from rlaifv.feedback.claims import make_splitter, run_claims

        llm = cfg.claims.splitter == "llm"
        default = _world_model("splitter", world, cfg.claims.splitter_model, s["prompts"])() if llm else None
        splitter = make_splitter(cfg.claims, str(default or ""))
        return run_claims(s["prompts"], s["candidates"], s["claims"], cfg.claims, splitter)
    if stage == "judge":
        from rlaifv.feedback.judge import holistic_claims, run_judge

        default = _world_model("labeler", world, cfg.judge.labeler, s["prompts"])
        engine = LoadedOnUse(lambda: load_engine(cfg.judge.labeler, default(), "judge.labeler"))
        if cfg.judge.mode == "holistic":
            claims = holistic_claims(s["candidates"].read_all(), cfg.claims.question_suffix)
        else:
            claims = s["claims"].read_all()
        return _noted_if_unloaded(run_judge(s["prompts"], claims, s["verdicts"], cfg.judge, engine, load_image),
                                  engine)
    if stage == "pairs":
        from rlaifv.feedback.pairs import build_pairs

        return build_pairs(s["prompts"], s["candidates"], s["verdicts"], out / PREFERENCES, cfg.pairs)
    raise ValueError(f"unknown stage {stage!r}")


def _noted_if_unloaded(result: dict, engine: LoadedOnUse) -> dict:
    """A stage's counts, with a note when its model never loaded because every record was already stored."""
    return result if engine.loaded else {**result, "note": "every record was stored; the model was not loaded"}


def collect(prompts_file: Path, out: Path, cfg: CollectConfig, world: WorldConfig | None = None,
            force_config: bool = False, rows: list[int] | None = None) -> dict:
    """All stages in order, then OUT/summary.json and OUT/report.md; returns the summary. A folder whose stages
    were made with another config is refused before anything runs (see `run_stage`). `rows`: only these rows of the
    prompts file (a round's slice)."""
    stages = ["prompts", "sample", "claims", "judge", "pairs"]
    check_configs(out, cfg, stages, force_config)
    with hold(out):
        return _collect(stages, prompts_file, out, cfg, world, force_config, rows)


def _collect(stages: list[str], prompts_file: Path, out: Path, cfg: CollectConfig, world: WorldConfig | None,
             force_config: bool, rows: list[int] | None) -> dict:
    write_text(out / "collect.yaml", json.dumps(cfg.model_dump(mode="json"), indent=2))
    timings, results = {}, {}
    for stage in stages:
        start = time.perf_counter()
        results[stage] = run_stage(stage, prompts_file, out, cfg, world, force_config, rows)
        timings[stage] = round(time.perf_counter() - start, 2)
        log(f"{stage}: {results[stage]} ({timings[stage]} s)")
    summary = summarize(out, results, cfg)
    summary["seconds"] = timings
    write_summary(out, summary)
    return summary


def summarize(out: Path, results: dict | None = None, cfg: CollectConfig | None = None) -> dict:
    """Per-stage counts (stored, quarantined by reason), the settings of `cfg` that differ from the paper's
    (`deviations`) and, for world prompts, how right the pairs are."""
    s = stores(out)
    summary: dict = {"stages": {}}
    if cfg is not None:
        summary["deviations"] = paper_deviations(cfg)
    for name, store in s.items():
        reasons = reason_counts(q.reason for q in store.read_quarantine())
        summary["stages"][name] = {"records": len(store), "quarantined": reasons}
    pairs_store = pair_store(out)
    summary["stages"]["pairs"] = {"records": len(pairs_store)}
    if results and isinstance(results.get("pairs"), dict):
        summary["stages"]["pairs"].update(results["pairs"])
    if results and "asked" in (results.get("judge") or {}):
        # distinct questions this run sent to the labeler (fewer than its verdicts when samples repeat claims; none
        # when a rerun finds every verdict stored): about the run, like `seconds`, not about the stores
        summary["questions_asked"] = results["judge"]["asked"]
    # which fast paths ran on each local model, and where the exact path served instead (engines.fastpath)
    fast = {stage: results[stage]["fast_paths"] for stage in ("sample", "judge")
            if results and (results.get(stage) or {}).get("fast_paths")}
    if fast:
        summary["fast_paths"] = fast
    summary.update(world_feedback(s["prompts"], pairs_store))
    return summary


def write_summary(out: Path, summary: dict) -> None:
    """OUT/summary.json, and OUT/report.md saying the same for people."""
    write_json(out / "summary.json", summary)
    lines = [f"# Feedback collection: `{out}`", "", "| stage | records | quarantined |", "|---|---|---|"]
    for name, info in summary["stages"].items():
        quarantined = ", ".join(f"{k}: {v}" for k, v in (info.get("quarantined") or {}).items()) or "none"
        lines.append(f"| {name} | {info.get('records', 0)} | {quarantined} |")
    if summary.get("feedback_precision") is not None:
        lines += ["", f"Feedback precision {summary['feedback_precision']:.3f} over {summary.get('n_pairs')} pairs "
                      "(world prompts: the chosen answer has fewer false statements)."]
    if "deviations" in summary:
        lines += ["", *deviations_section(summary["deviations"])]
    write_text(out / "report.md", "\n".join(lines) + "\n")


def deviations_section(deviations: list[dict]) -> list[str]:
    """Markdown lines: the settings of a run that differ from the paper's, or that none do."""
    head = "## Settings that differ from the paper's"
    if not deviations:
        return [head, "", "None: every setting of the method is the paper's."]
    return [head, "", *(f"- {format_deviation(d)}" for d in deviations)]


def world_feedback(prompts: ShardedStore[Prompt], pairs: ShardedStore[Pair]) -> dict:
    """feedback_precision and true_tie_rate of the pairs when the prompts come from the synthetic world (None
    where undefined, e.g. no pairs); {} for a user's prompts, which have no ground truth."""
    from rlaifv.eval.world_metrics import feedback_metrics
    from rlaifv.prompts import scene_of

    scenes = {p.prompt_id: scene_of(p) for p in prompts.read()}
    if not any(scenes.values()):
        return {}
    rows = [(scenes[p.prompt_id], p.chosen, p.rejected) for p in pairs.read() if scenes.get(p.prompt_id)]
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in feedback_metrics(rows).items()}


