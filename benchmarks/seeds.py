"""The demo on world seeds nobody tuned on: every seed's rounds and best-of-N, the median and the worst.

    python benchmarks/seeds.py --out runs/unseen                   # the ten report seeds, 100-109 (hours; resumes)
    python benchmarks/seeds.py --out runs/dev --seeds 0 1 2 3 4    # the development seeds, where settings are chosen

Settings are chosen on the `val` split and on seeds 0-4 only; seeds 100-109 are fixed here, before any result on
them was seen, and only report. Each seed is a cold `rlaifv demo --seed S` as a user runs it (a fresh process, an
empty model cache, a new work folder: `benchmarks/demo_rounds.run_seed`), so its time includes the bootstrap of every
world model. A finished seed is kept as OUT/seed-S.json and not run again; a seed killed midway starts over (its
time would not be a cold run's otherwise).

Prints, and writes to OUT/seeds.md, one row per seed -- base -> each round (CHAIRs / Cover), the lowest feedback
precision of its rounds, best-of-N's CHAIRs by N with the world's reward (the policy's likelihood; the paper's
'mean' form's best-of-8 / best-of-1 beside it), seconds -- then the median and the
worst seed, and which of these goals every seed meets:

- after the rounds: median CHAIRs <= 0.15 x base, every seed <= 0.25 x base; Cover down <= 0.03 on every seed;
- feedback precision >= 0.97 in every round;
- best-of-8 (the world's reward): CHAIRs <= best-of-1 on every seed, and >= 30 % below it at the median;
- a cold demo <= 600 s.

Append the printout to benchmarks/RESULTS.md with the machine it ran on, every seed run, not a selection.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from demo_rounds import run_seed

from rlaifv.files import write_json, write_text
from rlaifv.pipelines.world_bon import WORLD_BON_REWARD

UNSEEN = tuple(range(100, 110))  # fixed before any result on them was seen; they report, never choose
DEVELOPMENT = tuple(range(5))  # where settings are chosen (with the val split)
BON_NS = (1, 2, 4, 8)  # the demo samples 8 answers per scene


def seed_row(seed: int, result: dict[str, Any]) -> dict[str, Any]:
    """What the table shows of one seed's demo report."""
    report = result["report"]
    rows = report["rounds"]
    base, last = rows[0], rows[-1]
    bon = {r["n"]: r["chair_s"] for r in report.get("bon", []) if r["reward"] == WORLD_BON_REWARD}
    paper = {r["n"]: r["chair_s"] for r in report.get("bon", []) if r["reward"] == "mean"}
    precisions = [r["feedback_precision"] for r in rows[1:] if r.get("feedback_precision") is not None]
    return {
        "seed": seed,
        "rounds": [(r["chair_s"], r["cover"]) for r in rows],
        "ratio": last["chair_s"] / base["chair_s"] if base["chair_s"] else float("nan"),
        "cover_drop": base["cover"] - last["cover"],
        "min_precision": min(precisions) if precisions else None,
        "bon": bon,
        "bon8_vs_1": bon[8] / bon[1] if bon.get(1) and 8 in bon else None,
        "paper_bon8_vs_1": paper[8] / paper[1] if paper.get(1) and 8 in paper else None,
        "seconds": result["seconds"],
    }


def goals(rows: list[dict[str, Any]]) -> dict[str, bool]:
    ratios = [r["ratio"] for r in rows]
    bon = [r["bon8_vs_1"] for r in rows if r["bon8_vs_1"] is not None]
    return {
        "median CHAIRs <= 0.15 x base": statistics.median(ratios) <= 0.15,
        "every seed's CHAIRs <= 0.25 x base": max(ratios) <= 0.25,
        "Cover down <= 0.03 on every seed": max(r["cover_drop"] for r in rows) <= 0.03,
        "feedback precision >= 0.97 in every round": all((r["min_precision"] or 0) >= 0.97 for r in rows),
        "best-of-8 CHAIRs <= best-of-1 on every seed": len(bon) == len(rows) and max(bon) <= 1.0,
        "best-of-8 >= 30 % below best-of-1 at the median": len(bon) == len(rows) and statistics.median(bon) <= 0.7,
        "cold demo <= 600 s": max(r["seconds"] for r in rows) <= 600,
    }


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The markdown table: a row per seed, then the median and the worst (largest ratio) seed."""
    k = max(len(r["rounds"]) for r in rows)
    head = ["seed", "base"] + [f"round {i}" for i in range(1, k)] + ["final / base", "Cover drop", "min precision"]
    head += [f"bo{n}" for n in BON_NS] + ["bo8 / bo1", "bo8 / bo1, paper's reward", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def num(x: Any, fmt: str = ".3f") -> str:
        return "-" if x is None else format(x, fmt)

    for r in rows:
        cells = [str(r["seed"])] + [f"{c:.3f} / {v:.3f}" for c, v in r["rounds"]] + [""] * (k - len(r["rounds"]))
        cells += [num(r["ratio"], ".2f"), num(r["cover_drop"], "+.3f"), num(r["min_precision"])]
        cells += [num(r["bon"].get(n)) for n in BON_NS]
        cells += [num(r["bon8_vs_1"], ".2f"), num(r.get("paper_bon8_vs_1"), ".2f"), num(r["seconds"], ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    bon = [r["bon8_vs_1"] for r in rows if r["bon8_vs_1"] is not None]
    lines.append(f"| median | | {'| ' * (k - 1)}{statistics.median(r['ratio'] for r in rows):.2f} "
                 f"| {statistics.median(r['cover_drop'] for r in rows):+.3f} | | {'| ' * len(BON_NS)}"
                 f"{num(statistics.median(bon) if bon else None, '.2f')} | "
                 f"| {statistics.median(r['seconds'] for r in rows):.0f} |")

    def worst(key: str, fmt: str, lowest: bool = False) -> str:  # each column's worst value, with its seed
        have = [r for r in rows if r.get(key) is not None]
        if not have:
            return "-"
        r = (min if lowest else max)(have, key=lambda r: r[key])
        return f"{format(r[key], fmt)} ({r['seed']})"

    lines.append(f"| worst (seed) | | {'| ' * (k - 1)}{worst('ratio', '.2f')} | {worst('cover_drop', '+.3f')} "
                 f"| {worst('min_precision', '.3f', lowest=True)} | {'| ' * len(BON_NS)}{worst('bon8_vs_1', '.2f')} "
                 f"| | {worst('seconds', '.0f')} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="results folder: OUT/seed-S.json per finished seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(UNSEEN), help="default: the report seeds 100-109")
    ap.add_argument("--n-test", type=int, default=500, help="test scenes per evaluation (the demo's default)")
    ap.add_argument("--keep", type=Path, default=None,
                    help="keep each seed's demo work folder as KEEP/seed-S (about 1 GB each; for reports such as "
                         "bon_reward.py, never for choosing settings on a report seed)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import torch

    machine = (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
               f"threads {torch.get_num_threads()}")
    print(f"machine: {machine}", flush=True)
    rows = []
    for seed in args.seeds:
        done = args.out / f"seed-{seed}.json"
        if not done.is_file():
            print(f"seed {seed}: running a cold demo", file=sys.stderr, flush=True)
            if args.keep is not None and (args.keep / f"seed-{seed}").exists():
                shutil.rmtree(args.keep / f"seed-{seed}")  # a killed seed starts over, cold
            write_json(done, run_seed(seed, None, args.n_test, args.keep))
        rows.append(seed_row(seed, json.loads(done.read_text())))
    met = goals(rows)
    lines = [f"machine: {machine}; seeds {' '.join(map(str, args.seeds))}", "", *table(rows), ""]
    lines += [f"- {'met' if ok else 'MISSED'}: {goal}" for goal, ok in met.items()]
    write_text(args.out / "seeds.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
