"""`rlaifv demo`: the whole loop on the synthetic world, on a laptop, with no download.

So far: bootstrap the world's base policy and labeler (or reuse the cache), evaluate both on the held-out `test`
split, and write `report.json` / `report.md`. `rounds[0]` of the report is always the base policy.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from rlaifv.config import EvalConfig, WorldConfig, dump_yaml
from rlaifv.eval.report import ROUND_KEYS, write_report
from rlaifv.eval.world import evaluate_labeler, evaluate_policy, instruction_for
from rlaifv.progress import log
from rlaifv.records import Generation
from rlaifv.store import ShardedStore
from rlaifv.world.bootstrap import bootstrap
from rlaifv.world.language import describe, parse_mentions, true_mentions
from rlaifv.world.scenes import sample_scenes


def _examples(wcfg: WorldConfig, ecfg: EvalConfig, gen_dir: Path, n: int = 5) -> list[dict[str, Any]]:
    """A few base-policy descriptions next to the truth, the first ones that name an absent object first."""
    scenes = sample_scenes(wcfg.seed, ecfg.split, ecfg.n_scenes, wcfg.prior)
    texts = {g.prompt_id: g.text for g in ShardedStore(gen_dir, Generation).read()}
    rng = np.random.default_rng(0)
    rows = []
    for i, s in enumerate(scenes):
        hall = sorted({m.category for m in parse_mentions(texts[s.scene_id])} - s.categories)
        truth = describe(true_mentions(s), rng)
        rows.append({"scene_id": s.scene_id, "instruction": instruction_for(i), "truth": truth,
                     "response": texts[s.scene_id], "hallucinated": hall})
    rows.sort(key=lambda r: not r["hallucinated"])
    return rows[: n - 2] + [r for r in rows if not r["hallucinated"]][:2]


def run_demo(workdir: Path, seed: int = 0, world: WorldConfig | None = None, ecfg: EvalConfig | None = None) -> dict:
    """Run the demo into `workdir` and return the report (also written as report.json and report.md)."""
    wcfg = (world or WorldConfig()).model_copy(update={"seed": seed})
    ecfg = ecfg or EvalConfig()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(f"# world\n{dump_yaml(wcfg)}# eval\n{dump_yaml(ecfg)}")
    timings: dict[str, float] = {}

    models = bootstrap(wcfg)
    timings["bootstrap"] = models.manifest["seconds"] if models.built else 0.0  # 0: reused from the cache

    t = time.perf_counter()
    base_dir = workdir / "round-0" / "eval"
    policy = evaluate_policy(models.policy, wcfg, ecfg, base_dir)
    timings["evaluate base policy"] = time.perf_counter() - t

    t = time.perf_counter()
    labeler = evaluate_labeler(models.labeler, wcfg, ecfg)
    timings["evaluate labeler"] = time.perf_counter() - t

    report = {
        "seed": seed,
        "rounds": [{"round": 0, **{k: policy[k] for k in ROUND_KEYS}}],
        "labeler": {k: labeler[k] for k in ("accuracy", "hard_negative_accuracy", "false_rejection_rate")},
        "n_test_scenes": ecfg.n_scenes,
        "models": {"policy": str(models.policy), "labeler": str(models.labeler)},
        "examples": _examples(wcfg, ecfg, base_dir / "generations"),
        "timings": timings,
    }
    json_path, md_path = write_report(workdir, report)
    log(f"report: {md_path} and {json_path}")
    return report
