"""Cold-cache bootstrap time and base-model quality of the synthetic world, for several seeds, against the goals.

    python benchmarks/world_bootstrap.py --seeds 0 1 2 [--preset default] [--n-test 500]

Each seed bootstraps into a fresh temporary cache (cold), then runs the demo's evaluation of the base models (no
rounds; benchmarks/demo_rounds.py times those). `models_s` is the bootstrap of the policy and the labeler (the
shared vision alignment included); `bootstrap_s` adds the claim splitter, which the demo's 10-minute budget carries.
Prints one table row per seed and the goals side by side; append the printout to benchmarks/RESULTS.md with the
machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

GOALS = {
    "chair_s": (">=", 0.25),
    "cover": (">=", 0.60),
    "accuracy": (">=", 0.95),
    "hard_negative_accuracy": (">=", 0.90),
    "false_rejection_rate": ("<=", 0.01),
    "models_s": ("<=", 180.0),  # the policy and the labeler (alignment included); the splitter is the demo's
    "demo_s": ("<=", 240.0),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--n-test", type=int, default=500)
    args = ap.parse_args()

    import torch

    from rlaifv.config import EvalConfig
    from rlaifv.pipelines.demo import run_demo
    from rlaifv.world.config import WorldConfig

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["RLAIFV_CACHE"] = str(Path(tmp) / "cache")
            start = time.perf_counter()
            report = run_demo(Path(tmp) / "demo", seed, WorldConfig.preset(args.preset),
                              EvalConfig(n_scenes=args.n_test), rounds=0)  # the base models only
            demo_s = time.perf_counter() - start
            parts = _model_seconds()
        r0, lab = report["rounds"][0], report["labeler"]
        bootstrap_s = report["timings"]["bootstrap"]
        rows.append({"seed": seed, **r0, **lab, "bootstrap_s": bootstrap_s,
                     "models_s": bootstrap_s - (parts.get("splitter") or 0.0), "demo_s": demo_s})
        print(f"seed {seed}: bootstrap seconds per part: " + ", ".join(f"{k} {v}" for k, v in parts.items()))
    cols = ["seed", "chair_s", "chair_i", "cover", "attr_err", "mean_len", "accuracy", "hard_negative_accuracy",
            "false_rejection_rate", "models_s", "bootstrap_s", "demo_s"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    print("goals: " + ", ".join(f"{k} {op} {v}" for k, (op, v) in GOALS.items()))
    for r in rows:
        missed = [k for k, (op, v) in GOALS.items() if not (r[k] >= v if op == ">=" else r[k] <= v)]
        print(f"seed {r['seed']}: " + ("all goals met" if not missed else "missed " + ", ".join(missed)))


def _model_seconds() -> dict[str, float]:
    """Seconds of each training part of the bootstrap, from the manifest of the fresh cache's one build."""
    import json

    from rlaifv.world.bootstrap import MANIFEST, cache_root

    [manifest] = list((cache_root() / "world").glob(f"*/{MANIFEST}"))
    return {name: part.get("seconds") for name, part in json.loads(manifest.read_text()).get("train", {}).items()}


if __name__ == "__main__":
    main()
