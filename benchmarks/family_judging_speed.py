"""Packed vs plain yes/no judging per VLM family, side by side in one run (CPU or GPU).

For each family of tests/families.py (tiny random models, built locally): `--images` images of three sizes, each
with `--questions` questions, judged (a) the packed way the engine runs (`HFEngine.yes_no_shared`: each image
through the vision tower once, the prompt prefix once per packed row) and (b) one plain forward per question,
batched (`HFEngine.yes_no`). Prints seconds per 100 questions for each and the ratio, and the largest difference
in P(yes) between the two. Tiny models measure the overhead of the layout more than the saved compute: with a real
model's image (hundreds of tokens) the packed path gains much more (benchmarks/RESULTS.md).

    python benchmarks/family_judging_speed.py [--families qwen2_vl gemma3] [--images 6] [--questions 16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from families import FAMILIES, build_family, family_images  # noqa: E402

from rlaifv.engines.hf import HFEngine  # noqa: E402

QUESTIONS = ["Is there a red square in the image?", "Is the cat on the left of the dog?", "Is there a blue car?",
             "Is the ball under the table?", "Is there a small tree?", "Is the bird above the house?"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", default=[f for f in FAMILIES if f != "paligemma"])
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadier on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = family_images()
    images = [base[i % len(base)] for i in range(args.images)]
    questions = [f"{QUESTIONS[j % len(QUESTIONS)]} ({j})" for j in range(args.questions)]
    groups = [(image, questions) for image in images]
    n = args.images * args.questions
    print(f"{'family':<12} {'packed s/100q':>14} {'plain s/100q':>13} {'plain/packed':>13} {'max |dP(yes)|':>14}")
    for name in args.families:
        with tempfile.TemporaryDirectory() as folder:
            engine = HFEngine(build_family(name, Path(folder)))
            engine.yes_no_shared(groups[:1])  # warm up, and the fast-path check
            packed_s = plain_s = float("inf")
            for _ in range(args.repeats):
                t = time.perf_counter()
                packed = engine.yes_no_shared(groups)
                packed_s = min(packed_s, time.perf_counter() - t)
                t = time.perf_counter()
                plain = [engine.yes_no([image] * len(qs), qs) for image, qs in groups]
                plain_s = min(plain_s, time.perf_counter() - t)
            diff = max(abs(a[0] - b[0]) for ra, rb in zip(packed, plain) for a, b in zip(ra, rb))
            print(f"{name:<12} {100 * packed_s / n:>14.3f} {100 * plain_s / n:>13.3f} {plain_s / packed_s:>12.2f}x"
                  f" {diff:>14.1e}")


if __name__ == "__main__":
    main()
