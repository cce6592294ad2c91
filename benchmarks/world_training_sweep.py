"""How many steps and how big a model do the world's tiny VLMs need? A sweep for a GPU (or a patient CPU).

    python benchmarks/world_training_sweep.py --device cuda --out DIR

Trains labelers and policies of a few shapes and step counts with the bootstrap's own code and evaluates each on
held-out scenes; prints one JSON line per run. Used to size the default bootstrap, whose CPU budget is fixed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RUNS = [
    # (name, role, model overrides, train overrides)
    ("labeler-base-4k", "labeler", {}, {"scenes": 64000, "batch_size": 64, "lr": 1e-3, "vision_pretrain_steps": 600}),
    ("labeler-wide-4k", "labeler", {"text_hidden": 256, "text_layers": 4, "text_heads": 8, "text_intermediate": 768},
     {"scenes": 64000, "batch_size": 64, "lr": 1e-3, "vision_pretrain_steps": 600}),
    ("policy-base-2k", "policy", {}, {"scenes": 128000, "batch_size": 64, "lr": 2e-3, "vision_pretrain_steps": 600}),
    ("policy-wide-2k", "policy", {"text_hidden": 256, "text_layers": 4, "text_heads": 8, "text_intermediate": 768},
     {"scenes": 128000, "batch_size": 64, "lr": 1e-3, "vision_pretrain_steps": 600}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", nargs="*", help="names of runs to do")
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply scenes and vision steps (0.01 = smoke test)")
    args = ap.parse_args()

    from rlaifv.config import EvalConfig, SFTConfig, WorldConfig
    from rlaifv.eval.world import evaluate_labeler, evaluate_policy
    from rlaifv.world.bootstrap import train_model
    from rlaifv.world.models import TinyVLMConfig, build_tokenizer

    tok = build_tokenizer(0)
    for name, role, model_over, train_over in RUNS:
        if args.only and name not in args.only:
            continue
        model = TinyVLMConfig(**model_over)
        train_over = {**train_over, "scenes": max(64, int(train_over["scenes"] * args.scale)),
                      "vision_pretrain_steps": max(1, int(train_over["vision_pretrain_steps"] * args.scale))}
        train = SFTConfig(**({"examples_per_scene": 4} if role == "labeler" else {}), **train_over)
        cfg = WorldConfig(**{f"{role}_model": model, f"{role}_train": train})
        start = time.perf_counter()
        stats = train_model(cfg, tok, role, args.out / name, device=args.device)
        ecfg = EvalConfig(n_scenes=args.n_test)
        if role == "labeler":
            metrics = evaluate_labeler(args.out / name, cfg, ecfg, device=args.device)
        else:
            metrics = evaluate_policy(args.out / name, cfg, ecfg, device=args.device)
        print(json.dumps({"run": name, "seconds": round(time.perf_counter() - start, 1), **stats, **metrics}),
              flush=True)


if __name__ == "__main__":
    main()
