"""`rlaifv demo`: the whole loop on the synthetic world, on a laptop, with no download.

Bootstrap the world's base policy and labeler (or reuse the cache), run the iterative rounds on fresh
world scenes (loop.iterate: collect -> DPO -> checkpoint selection on `val`), evaluate the base policy and every
round's selected checkpoint on the held-out `test` split, evaluate the labeler, run best-of-N with the final
policy's own reward on the `test` split (pipelines.world_bon), and write `report.json` / `report.md` (with charts of the
rounds and of best-of-N). `rounds[0]` of the report is always the base policy; `rounds[k]` is
round k's checkpoint with the pairs that trained it. The rounds resume like `rlaifv iterate`: rerun the same
command after a crash.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from rlaifv.config import BonConfig, EvalConfig, IterateConfig, dump_yaml, paper_deviations
from rlaifv.eval.report import FEEDBACK_KEYS, ROUND_KEYS, write_report
from rlaifv.eval.world import evaluate_labeler
from rlaifv.files import write_text
from rlaifv.pipelines.loop import STATE, iterate, round_dir
from rlaifv.pipelines.world_bon import BON_TEMPERATURE, WORLD_BON_REWARD, world_bon, world_bon_config
from rlaifv.progress import log
from rlaifv.records import Generation
from rlaifv.store import ShardedStore
from rlaifv.world.bootstrap import bootstrap
from rlaifv.world.config import WORLD_WHY, WorldConfig, world_rounds_config
from rlaifv.world.language import describe, instruction_for, parse_mentions, true_mentions
from rlaifv.world.scenes import sample_scenes

DEMO_BON_SAMPLES = 8  # answers per test scene for the best-of-N section (paper Fig. 5 goes to 64); 8 keeps the
# cold demo within 10 minutes, `--bon-samples 16` shows the next N
DEMO_ROUNDS = 4  # the paper's count; fits the 10-minute cold budget on a 2-core CPU next to the ~2-minute bootstrap


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


def report_rounds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The loop's rows as the report's: every round's policy and test metrics, plus for k >= 1 the training pairs'
    counts and the DPO step the round chose (0: it kept its starting policy, `selection_note` says why; `skipped`:
    why it could not train)."""
    return [{"round": r["round"], "policy": r["policy"], **{k: r[k] for k in ROUND_KEYS},
             **({**{k: r[k] for k in FEEDBACK_KEYS}, "step": r["step"]} if r["round"] > 0 else {}),
             **({"skipped": r["skipped"]} if r.get("skipped") else {}),
             **({"selection_note": r["selection_note"]} if r.get("selection_note") else {})} for r in rows]


def run_demo(workdir: Path, seed: int = 0, world: WorldConfig | None = None, ecfg: EvalConfig | None = None,
             rounds: int = DEMO_ROUNDS, icfg: IterateConfig | None = None, bon_samples: int = DEMO_BON_SAMPLES) -> dict:
    """Run the demo into `workdir` and return the report (also written as report.json and report.md).

    `icfg` sets how a round collects, trains and selects (default: the world's, `world_rounds_config()`); `rounds`
    and `ecfg` (the `test` evaluation) override its fields of the same meaning. The report lists the settings that
    differ from the paper's (`deviations`). `bon_samples` answers per test scene feed
    the best-of-N section (0: none; it needs a round that changed the policy: the policy that round started
    from is the reference).
    """
    wcfg = (world or WorldConfig()).model_copy(update={"seed": seed})
    ecfg = ecfg or EvalConfig()
    icfg = IterateConfig.model_validate({**(icfg or world_rounds_config()).model_dump(), "rounds": rounds,
                                         "eval": ecfg.model_dump(), "test_metrics": True})
    workdir.mkdir(parents=True, exist_ok=True)
    write_text(workdir / "config.yaml", f"# world\n{dump_yaml(wcfg)}# rounds\n{dump_yaml(icfg)}")
    timings: dict[str, float] = {}

    models = bootstrap(wcfg)
    timings["bootstrap"] = models.manifest["seconds"] if models.built else 0.0  # 0: reused from the cache
    # each model's training seconds, the labeler's checks on `val` claims (one per pass it trained) and the vision
    # alignment's relative error per attempt (one per fresh start)
    built = {role: {k: v for k, v in part.items() if k in ("seconds", "steps", "checks", "attempts")}
             for role, part in models.manifest["train"].items()}

    t = time.perf_counter()
    loop = iterate(workdir, icfg, world=wcfg)
    seconds = _step_seconds(workdir)
    timings["evaluate base policy"] = seconds.get("round-0/finish", 0.0)
    if "round-0/select" in seconds:
        timings["base policy on val (for selection)"] = seconds["round-0/select"]
    for k in range(1, rounds + 1):
        timings[f"round {k}"] = sum(v for name, v in seconds.items() if name.startswith(f"round-{k}/"))
    timings["rounds in all (this run)"] = time.perf_counter() - t

    t = time.perf_counter()
    labeler = evaluate_labeler(models.labeler, wcfg, ecfg)
    timings["evaluate labeler"] = time.perf_counter() - t

    bon: dict[str, Any] = {}
    if bon_samples and rounds:
        t = time.perf_counter()
        bon = _best_of_n(workdir, loop["rounds"], wcfg, ecfg, bon_samples, icfg.collect.sample.policy.device)
        timings["best-of-N"] = time.perf_counter() - t

    report = {
        "seed": seed,
        "select_on": loop["select_on"],
        **({"val_scenes": icfg.val_scenes} if loop["select_on"] == "world" else {}),
        "rounds": report_rounds(loop["rounds"]),
        **bon,
        "labeler": {k: labeler[k] for k in ("accuracy", "hard_negative_accuracy", "false_rejection_rate")},
        "bootstrap": built,
        "n_test_scenes": ecfg.n_scenes,
        "models": {"policy": str(models.policy), "labeler": str(models.labeler),
                   "rounds": [r["policy"] for r in loop["rounds"][1:]]},
        "examples": _examples(wcfg, ecfg, round_dir(workdir, 0) / "eval" / "generations"),
        "deviations": world_deviations(icfg, world_bon_config("", "", wcfg, ecfg, bon_samples) if bon else None),
        "timings": timings,
    }
    json_path, md_path = write_report(workdir, report)
    log(f"report: {md_path} and {json_path}")
    return report


def world_deviations(icfg: IterateConfig, bon: BonConfig | None = None) -> list[dict[str, Any]]:
    """The settings of the world's rounds (and of its best-of-N, fields prefixed `bon.`) that differ from the paper's,
    each with `why` the world uses its value (world.config.WORLD_WHY), '' where the value is not the world's
    default (a caller's own choice, such as the tests' micro settings)."""
    def listed(rounds: IterateConfig, best: BonConfig | None) -> list[dict[str, Any]]:
        found = paper_deviations(rounds)
        return found + ([dict(d, field=f"bon.{d['field']}") for d in paper_deviations(best)] if best else [])

    defaults = {d["field"]: d["value"] for d in listed(world_rounds_config(),
                                                         world_bon_config("", "", WorldConfig(), EvalConfig()))}
    return [dict(d, why=WORLD_WHY.get(d["field"], "") if defaults.get(d["field"]) == d["value"] else "")
            for d in listed(icfg, bon)]


def _best_of_n(workdir: Path, rows: list[dict[str, Any]], wcfg: WorldConfig, ecfg: EvalConfig, n_max: int,
               device: str) -> dict[str, Any]:
    """The report's `bon` rows and `bon_setup`: the final policy against its reference, the policy that the round
    which trained it started from (`trained_in`; a later round may have kept the final policy, so the reference is
    not always what the last round started from). Nothing when no round changed the policy (every reward would
    be 0)."""
    policy = rows[-1]["policy"]
    changed = [k for k in range(1, len(rows)) if rows[k]["policy"] != rows[k - 1]["policy"]]
    if not changed:
        log("best-of-N skipped: no round changed the policy, so its reward is 0 for every answer")
        return {}
    reference = rows[changed[-1] - 1]["policy"]
    table, summary = world_bon(workdir / "bon", policy, reference, wcfg, ecfg, n_max, device)
    return {"bon": table, "bon_setup": {"policy": policy, "reference": reference, "trained_in": changed[-1],
                                        "samples": n_max, "temperature": BON_TEMPERATURE,
                                        "reward": WORLD_BON_REWARD,
                                        "scored": summary["scored"], "quarantined": summary["quarantined"]}}


def _step_seconds(workdir: Path) -> dict[str, float]:
    """Seconds per finished step of the rounds, from the loop's state file."""
    return json.loads((workdir / STATE).read_text(encoding="utf-8")).get("seconds", {})
