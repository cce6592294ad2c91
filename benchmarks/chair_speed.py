"""Speed of `rlaifv eval chair` (rule extraction) on 10,000 responses: the goal is <= 30 s on a 2-core CPU.

Writes a synthetic Object HalBench-sized ground truth (300 images, instances + 5 captions each) and 10,000
description-style responses of ~100 words mixing COCO objects, synonyms, plurals and two-word phrases, then times
the scorer in-process and the command end to end (a fresh Python process, `--json` to a file).

    python benchmarks/chair_speed.py [--responses 10000] [--words 100]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rlaifv.eval.chair import evaluate

OBJECTS = ["dog", "dogs", "puppy", "man", "woman", "people", "children", "car", "cars", "bus", "hot dog", "teddy bear",
           "dining table", "table", "chairs", "couch", "sofa", "tv", "laptop", "cell phone", "cup", "cups", "bowl",
           "pizza", "cake", "bench", "toilet seat", "baby elephant", "giraffe", "zebras", "train", "train track",
           "bicycle", "motor bike", "kite", "surfboard", "skis", "knives", "fork", "wine glasses", "bottle"]
FILLER = ("the a of in on with next to near and is are there sitting standing bright sunny large small red blue "
          "green old wooden background front left right side image shows scene several two three").split()
CAPTION_OBJECTS = ["dog", "man", "table", "car", "cup", "pizza", "bench", "train", "kite", "laptop"]


def synthetic(root: Path, n_responses: int, n_words: int, seed: int = 0) -> tuple[Path, Path]:
    rng = random.Random(seed)
    gt = root / "g.jsonl"
    with open(gt, "w") as f:
        for image in range(300):
            instances = rng.sample(["dog", "person", "car", "dining table", "cup", "pizza", "bench", "kite"], 3)
            captions = [f"A {rng.choice(CAPTION_OBJECTS)} next to a {rng.choice(CAPTION_OBJECTS)}." for _ in range(5)]
            f.write(json.dumps({"image_id": image, "instances": instances, "captions": captions}) + "\n")
    responses = root / "r.jsonl"
    with open(responses, "w") as f:
        for i in range(n_responses):
            words = [rng.choice(OBJECTS) if rng.random() < 0.12 else rng.choice(FILLER) for _ in range(n_words)]
            text = " ".join(words).capitalize() + "."
            f.write(json.dumps({"image_id": i % 300, "question": "Describe the image.", "response": text}) + "\n")
    return gt, responses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--responses", type=int, default=10_000)
    parser.add_argument("--words", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gt, responses = synthetic(Path(tmp), args.responses, args.words)
        start = time.perf_counter()
        result = evaluate(responses, ground_truth=gt)
        in_process = time.perf_counter() - start
        out = Path(tmp) / "out.json"
        start = time.perf_counter()
        with open(out, "w") as f:
            subprocess.run([sys.executable, "-m", "rlaifv.cli", "eval", "chair", "--responses", str(responses),
                            "--ground-truth", str(gt), "--json"], stdout=f, check=True)
        command = time.perf_counter() - start
        assert json.loads(out.read_text())["n_mentions"] == result["n_mentions"]
    print(f"{args.responses} responses x {args.words} words: {result['n_mentions']} mentions, CHAIRi "
          f"{result['chair_i']:.3f}, CHAIRs {result['chair_s']:.3f}")
    print(f"scorer in-process: {in_process:.2f} s; `rlaifv eval chair` end to end: {command:.2f} s (goal <= 30 s)")


if __name__ == "__main__":
    main()
