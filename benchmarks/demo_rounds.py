"""A cold `rlaifv demo --rounds K`, timed end to end, with every round's numbers against the project's goals.

    python benchmarks/demo_rounds.py                       # seed 0, the demo's default rounds
    python benchmarks/demo_rounds.py --seeds 0 1 2 --rounds 3

Also prints the best-of-N table of the report (goals: best-of-8 with the mean reward below best-of-1 on
CHAIRs, and no shorter; the sum reward's answers shorter).

Each seed runs the command as a user would (a fresh process, a fresh empty cache, a fresh work folder), so the time
includes Python start-up and the bootstrap of every world model. Prints one table per seed (test split: CHAIRs,
CHAIRi, Cover, mean length; the pairs that trained each round and their feedback precision; seconds per round) and
which goals were met; append the printout to benchmarks/RESULTS.md with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOALS = (
    "CHAIRs after the rounds <= 0.15 x the base policy's (-85 %)",
    "Cover down by at most 0.03 (absolute)",
    "cold demo <= 600 s (aim: 480 s)",
    "a round <= ~90 s",
    "best-of-8 with the mean reward: CHAIRs below best-of-1",
    "best-of-8: the mean reward's answers no shorter than best-of-1's, the sum reward's shorter",
    "feedback precision (false statements, as defined) >= 0.97 in every round",
)


def run_seed(seed: int, rounds: int | None, n_test: int, keep: Path | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        work = (keep / f"seed-{seed}") if keep else Path(tmp) / "demo"
        env = {**os.environ, "RLAIFV_CACHE": str(Path(tmp) / "cache")}
        cmd = [sys.executable, "-m", "rlaifv.cli", "demo", "--workdir", str(work), "--seed", str(seed),
               "--n-test", str(n_test), "--json"]
        if rounds is not None:
            cmd += ["--rounds", str(rounds)]
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"seed {seed}: demo failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return {"seed": seed, "seconds": seconds, "report": json.loads(done.stdout)}


def print_seed(result: dict) -> list[str]:
    """The seed's table; returns the goals it missed."""
    report, timings = result["report"], result["report"]["timings"]
    rows = report["rounds"]
    print(f"\nseed {result['seed']}: cold demo {result['seconds']:.1f} s (bootstrap {timings['bootstrap']:.1f} s)")
    print("| round | CHAIRs | CHAIRi | Cover | mean_len | pairs | feedback precision | per error | true ties "
          "| seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        k = r["round"]
        secs = timings.get(f"round {k}", timings.get("evaluate base policy") if k == 0 else None)
        fp, ties, ep = r.get("feedback_precision"), r.get("true_tie_rate"), r.get("error_precision")
        print(f"| {'base' if k == 0 else k} | {r['chair_s']:.3f} | {r['chair_i']:.3f} | {r['cover']:.3f} "
              f"| {r['mean_len']:.1f} | {r.get('n_pairs', '-')} | {'-' if fp is None else f'{fp:.3f}'} "
              f"| {'-' if ep is None else f'{ep:.3f}'} | {'-' if ties is None else f'{ties:.3f}'} "
              f"| {'-' if secs is None else f'{secs:.1f}'} |")
    base, last = rows[0], rows[-1]
    round_s = [timings[f"round {r['round']}"] for r in rows[1:]]
    checks = {
        GOALS[0]: last["chair_s"] <= 0.15 * base["chair_s"],
        GOALS[1]: base["cover"] - last["cover"] <= 0.03,
        GOALS[2]: result["seconds"] <= 600,
        GOALS[3]: bool(round_s) and max(round_s) <= 90,
        GOALS[6]: all((r.get("feedback_precision") or 0) >= 0.97 for r in rows[1:]),
    }
    bon = {(r["reward"], r["n"]): r for r in report.get("bon", [])}
    if bon:
        print("\nbest-of-N (final policy's reward against its round's reference, test split):")
        print("| N | reward | CHAIRs | CHAIRi | Cover | mean_len |")
        print("|---|---|---|---|---|---|")
        for r in report["bon"]:
            print(f"| {r['n']} | {r['reward']} | {r['chair_s']:.3f} | {r['chair_i']:.3f} | {r['cover']:.3f} "
                  f"| {r['mean_len']:.1f} |")
        one, mean8, sum8 = bon["mean", 1], bon["mean", 8], bon["sum", 8]
        checks[GOALS[4]] = mean8["chair_s"] < one["chair_s"]
        checks[GOALS[5]] = mean8["mean_len"] >= one["mean_len"] and sum8["mean_len"] < one["mean_len"]
    print("\ntimings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    change = (last["chair_s"] - base["chair_s"]) / base["chair_s"] if base["chair_s"] else float("nan")
    print(f"CHAIRs {base['chair_s']:.3f} -> {last['chair_s']:.3f} ({change:+.1%}), Cover {base['cover']:.3f} -> "
          f"{last['cover']:.3f}; labeler accuracy {report['labeler']['accuracy']:.3f}, false rejections "
          f"{report['labeler']['false_rejection_rate']:.3f}")
    return [goal for goal, met in checks.items() if not met]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--rounds", type=int, default=None, help="default: the demo's")
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--keep", type=Path, default=None, help="keep each seed's work folder under this folder")
    args = ap.parse_args()

    import torch

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    for seed in args.seeds:
        missed = print_seed(run_seed(seed, args.rounds, args.n_test, args.keep))
        print("all goals met" if not missed else "missed: " + "; ".join(missed))


if __name__ == "__main__":
    main()
