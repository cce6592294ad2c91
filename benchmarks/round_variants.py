"""One round of a finished world run, trained again with other pair or DPO settings on the same samples: what would
the round's selection have chosen?

    python benchmarks/round_variants.py runs/demo --round 3 --out /tmp/r3-sft --set dpo.rpo_alpha=1.0
    python benchmarks/round_variants.py runs/demo --round 3 --out /tmp/r3-lr --set dpo.learning_rate=5e-6
    python benchmarks/round_variants.py runs/demo --round 3 --out /tmp/r3-p --set collect.pairs.closest_length=1

A round's samples and verdicts, and the policy it starts from, are fixed once it has collected; only its pairs
(`collect.pairs`, rebuilt from the stored verdicts), its DPO and its selection depend on the settings here. So a
setting can be compared round by round, in a few minutes each (train, select, evaluate on 2 CPU cores), instead of
in a cold demo of 7-8 minutes whose later rounds also differ by their samples. RUN is an `rlaifv iterate` or
`rlaifv demo` work folder on the world's scenes; it is only read. The world's models come from the model cache
(bootstrapped there first if a cold run's cache is gone); round 1 starts from the base policy at the path RUN
recorded.

OUT gets the run's state up to round K's collected pairs (the prompts, the pairs and the train/selection split are
copied, or with a `collect.pairs` change the verdicts, the pairs then built again; the reference log-probs are
computed again), and `rlaifv iterate`'s own code runs the round's reference,
training, selection and test evaluation there. Prints every checkpoint's `val` CHAIRs / Cover / attribute errors,
the step the selection kept, and the kept policy's `test` numbers beside the original run's. Choose on `val` and on
development seeds only (`benchmarks/seeds.py` says which); the `test` column reports.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

KEPT_STEPS = ("prompts", "collect", "split")  # what round K keeps from RUN; the reference is recomputed in OUT
ROUND_INPUTS = ("prompts.parquet", "prompt_rows.json", "split.json", "collect")  # the loop writes config.yaml


def setting(text: str) -> tuple[list[str], Any]:
    """'dpo.rpo_alpha=1.0' -> (['dpo', 'rpo_alpha'], 1.0); the value is JSON, or a plain string."""
    key, _, value = text.partition("=")
    path = key.split(".")
    if not value or not (path[0] in ("dpo", "checkpoints", "cover_tolerance", "cover_penalty")
                         or path[:2] == ["collect", "pairs"]):
        raise SystemExit(f"--set {text!r}: expected dpo.FIELD=VALUE or collect.pairs.FIELD=VALUE (or checkpoints / "
                         "cover_tolerance / cover_penalty): only what acts after a round's verdicts can change")
    try:
        return path, json.loads(value)
    except json.JSONDecodeError:
        return path, value


def nested(path: list[str], value: Any) -> dict[str, Any]:
    """(['dpo', 'rpo_alpha'], 1.0) -> {'dpo': {'rpo_alpha': 1.0}}"""
    return {path[0]: nested(path[1:], value) if len(path) > 1 else value}


def prepare(run: Path, k: int, out: Path, changes: dict[str, Any]) -> dict[str, Any]:
    """Write OUT's state.json (RUN's steps before round K, and round K's first steps) and copy round K's inputs;
    returns the run record with the changed config. A change of `collect.pairs` reruns the round's collect step:
    its samples, claims and verdicts are found stored, and only the pairs are built again."""
    from rlaifv.config import merge_config_data

    state = json.loads((run / "state.json").read_text(encoding="utf-8"))
    if f"round-{k}/split" not in state["steps"]:
        raise SystemExit(f"{run}: round {k} has not collected its pairs yet")

    kept_steps = KEPT_STEPS if "pairs" not in changes.get("collect", {}) else ("prompts",)

    def kept(name: str) -> bool:
        if name == "start" or name.startswith("round-0/"):
            return True
        r, step = name.split("/")
        j = int(r.removeprefix("round-"))
        return j < k or (j == k and step in kept_steps)

    state["steps"] = {name: v for name, v in state["steps"].items() if kept(name)}
    state["seconds"] = {}
    state["run"]["config"] = merge_config_data(state["run"]["config"], changes)
    state["run"]["config"]["rounds"] = k
    out.mkdir(parents=True)
    (out / "state.json").write_text(json.dumps(state), encoding="utf-8")
    for name in ROUND_INPUTS:
        src, dst = run / f"round-{k}" / name, out / f"round-{k}" / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst)
        elif src.is_file():
            shutil.copy2(src, dst)
    return state["run"]


def curve(selection: dict[str, Any]) -> list[str]:
    return [f"| {c['step']} | {c['metrics']['chair_s']:.3f} | {c['metrics']['cover']:.3f} "
            f"| {c['metrics']['attr_err']:.3f} |" for c in selection["candidates"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a finished (or collected) world iterate/demo work folder; only read")
    ap.add_argument("--round", type=int, required=True, help="the round to train again (1 = the first)")
    ap.add_argument("--out", type=Path, required=True, help="a new folder for the round trained again")
    ap.add_argument("--set", action="append", default=[], metavar="dpo.FIELD=VALUE",
                    help="a changed setting (repeatable); none = the original's, to check it reproduces")
    args = ap.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; name a new folder")
    from rlaifv.config import IterateConfig, merge_config_data
    from rlaifv.pipelines.loop import iterate
    from rlaifv.world.config import WorldConfig

    changes: dict[str, Any] = {}
    for text in args.set:
        changes = merge_config_data(changes, nested(*setting(text)))
    record = prepare(args.run, args.round, args.out, changes)
    summary = iterate(args.out, IterateConfig.model_validate(record["config"]),
                      world=WorldConfig.model_validate(record["world"]))
    k = args.round
    new = json.loads((args.out / f"round-{k}" / "select" / "selection.json").read_text(encoding="utf-8"))
    old_file = args.run / f"round-{k}" / "select" / "selection.json"
    old = json.loads(old_file.read_text(encoding="utf-8")) if old_file.is_file() else None
    print(f"\n{args.run}, round {k}, {' '.join(args.set) or 'the original settings'}")
    print("\n| step | `val` CHAIRs | Cover | attribute errors |\n|---|---|---|---|")
    print("\n".join(curve(new)))
    row = summary["rounds"][-1]
    line = (f"\nkept step {new['step']}: `val` {new['metrics']['chair_s']:.3f} / {new['metrics']['cover']:.3f}, "
            f"`test` {row['chair_s']:.3f} / {row['cover']:.3f}")
    if old is not None:
        original = json.loads((args.run / f"round-{k}" / "round.json").read_text(encoding="utf-8"))
        line += (f"; the original kept step {old['step']}: `val` {old['metrics']['chair_s']:.3f} / "
                 f"{old['metrics']['cover']:.3f}, `test` {original['chair_s']:.3f} / {original['cover']:.3f}")
    print(line)


if __name__ == "__main__":
    main()
