"""`rlaifv collect` on the synthetic world: wall time per stage and how right the pairs are.

    python benchmarks/collect_world.py --prompts 256 --n 8            # rules splitter, divide and conquer + holistic
    python benchmarks/collect_world.py --prompts 256 --n 8 --splitter llm

Ground truth is exact on the world, so each pair's direction can be checked: feedback_precision = pairs whose
chosen response has fewer false statements than the rejected one / pairs where the counts differ; true_tie_rate =
pairs with equal counts / all pairs. Divide and conquer and the holistic ablation judge the same candidates.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0, help="world seed")
    ap.add_argument("--splitter", choices=("rules", "llm"), default="rules")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    from rlaifv.cli.common import quiet_libraries
    from rlaifv.config import CollectConfig
    from rlaifv.pipelines.collect import collect
    from rlaifv.prompts import write_world_prompts
    from rlaifv.world.bootstrap import bootstrap
    from rlaifv.world.config import WorldConfig

    quiet_libraries()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rlaifv-collect-"))
    world = WorldConfig(seed=args.seed)
    start = time.perf_counter()
    bootstrap(world)
    print(f"world models ready in {time.perf_counter() - start:.1f} s")
    prompts = write_world_prompts(args.seed, "prompts", args.prompts, work / "prompts.jsonl", world.prior)
    cfg = CollectConfig.model_validate({
        "sample": {"n": args.n, "max_new_tokens": args.max_new_tokens},
        "claims": {"splitter": args.splitter},
    })
    dc = work / "dc"
    shutil.rmtree(dc, ignore_errors=True)
    start = time.perf_counter()
    summary = collect(prompts, dc, cfg, world)
    total = time.perf_counter() - start

    holistic = work / "holistic"
    shutil.rmtree(holistic, ignore_errors=True)
    for name in ("prompts", "candidates"):
        shutil.copytree(dc / name, holistic / name)
    hcfg = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"mode": "holistic"})})
    hsum = collect(prompts, holistic, hcfg, world)

    print(f"\n{args.prompts} prompts x {args.n} samples, splitter {args.splitter}, world seed {args.seed}")
    print("| stage | seconds |\n|---|---|")
    for stage, sec in summary["seconds"].items():
        print(f"| {stage} | {sec:.1f} |")
    print(f"| all (with model loading) | {total:.1f} |")
    print("\n| judging | pairs | feedback_precision | true_tie_rate |\n|---|---|---|---|")
    def fmt(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    for name, s in (("divide and conquer", summary), ("holistic", hsum)):
        print(f"| {name} | {s.get('n_pairs', 0)} | {fmt(s.get('feedback_precision'))} | "
              f"{fmt(s.get('true_tie_rate'))} |")
    print(json.dumps({"dc": summary, "holistic": hsum}, default=str)[:2000])


if __name__ == "__main__":
    main()
