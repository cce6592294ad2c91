"""Largest difference between each fast path and the plain transformers forward, per VLM family (fp32, CPU).

The same comparisons as tests/test_families.py, printed as numbers instead of asserted: for each family of
tests/families.py (tiny sharpened random models, three image sizes per batch) --

- sampling: greedy answers of the shared prefill (n = 3) that differ from `generate`'s, out of all;
- judging: max |P(yes) packed - P(yes) plain| and the same for P(no);
- reference / DPO log-probs: max relative difference of summed answer log-probs, packed vs a plain forward;
- best-of-N: the same for best-of-N's grouped packing;
- DPO step: the first step's loss minus log 2 (0 when policy = reference) after one step at batch 2.

    python benchmarks/family_parity.py [--families qwen2_vl gemma3]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from families import FAMILIES, build_family, family_images  # noqa: E402
from test_families import ANSWERS, QUESTIONS, _examples, _plain, _plain_logp  # noqa: E402

from rlaifv.config import DPOConfig  # noqa: E402
from rlaifv.engines.base import Sampling  # noqa: E402
from rlaifv.engines.hf import HFEngine  # noqa: E402
from rlaifv.logps.encode import PairEncoder  # noqa: E402
from rlaifv.logps.packed import ResponseGroup, group_logps, packed_logps  # noqa: E402
from rlaifv.train.dpo import read_metrics, train_dpo  # noqa: E402


def measure(name: str, folder: Path) -> dict:
    engine = HFEngine(build_family(name, folder / "model"))
    images = family_images()
    groups = [(image, list(QUESTIONS)) for image in images]
    got = engine.yes_no_shared(groups, questions_per_pack=2, packs_per_forward=2)
    judge = 0.0
    for (image, questions), row in zip(groups, got):
        for question, (p_yes, p_no) in zip(questions, row):
            probs = _plain(engine, engine.prompt_text(question), image)[1][-1].softmax(-1)
            judge = max(judge, abs(p_yes - float(probs[engine.yes_ids].sum())),
                        abs(p_no - float(probs[engine.no_ids].sum())))
    questions = ["Describe the picture.", "What is in the image?", "Describe the picture briefly."]
    samples = engine.sample(images, questions, 3, Sampling(max_new_tokens=6))
    wrong = 0
    for image, question, rows in zip(images, questions, samples):
        inputs = engine.process([engine.prompt_text(question)], [image], return_tensors="pt")
        out = engine.model.generate(**inputs, max_new_tokens=6, do_sample=False)[0, inputs["input_ids"].shape[1] :]
        wrong += sum(r != engine._decode(out[None])[0] for r in rows)
    encoder = PairEncoder(engine.processor, None)
    examples = _examples()
    pairs = [encoder(e, image) for e, image in zip(examples, images)]
    with torch.no_grad():
        packed = packed_logps(engine.model, pairs, engine.tokenizer.pad_token_id)
        grouped = group_logps(engine.model, [ResponseGroup(p.prompt_ids, [p.chosen_ids, p.rejected_ids], p.vision)
                                             for p in pairs], engine.tokenizer.pad_token_id, 2, 3)
    ref = bon = 0.0
    for i, (example, pair, image) in enumerate(zip(examples, pairs, images)):
        _, chosen_text, rejected_text = encoder.texts(example)
        want = [_plain_logp(engine, pair.prompt_ids, chosen_text, image, pair.chosen_ids),
                _plain_logp(engine, pair.prompt_ids, rejected_text, image, pair.rejected_ids)]
        for got_v, want_v in zip([float(packed.chosen[i]), float(packed.rejected[i])], want):
            ref = max(ref, abs(got_v - want_v) / abs(want_v))
        for got_v, want_v in zip(grouped[i].tolist(), want):
            bon = max(bon, abs(got_v - want_v) / abs(want_v))
    rows = []
    for i, image in enumerate(images):
        image.save(folder / f"{i}.png")
        rows.append({"image": f"{i}.png", "question": QUESTIONS[i], "chosen": ANSWERS[i % 2],
                     "rejected": ANSWERS[(i + 1) % 2]})
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + rows[:1]))
    cfg = DPOConfig(per_device_train_batch_size=2, gradient_accumulation_steps=1, max_steps=1, save_steps=100,
                    logging_steps=1, learning_rate=1e-3, warmup_ratio=0.0, report_to="none")
    summary = train_dpo(folder / "pairs.jsonl", engine.path, folder / "run", cfg)
    step = read_metrics(summary["metrics"])[0]["loss"] - math.log(2)
    return {"sampling": f"{wrong}/9 differ", "judging": judge, "ref_logps": ref, "bon": bon, "dpo_step": step,
            "paths": {k: v["fast"] for k, v in engine.fast_paths().items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", default=[f for f in FAMILIES if f != "paligemma"])
    args = parser.parse_args()
    print(f"{'family':<12} {'sampling':>12} {'judging':>9} {'ref logps':>10} {'best-of-N':>10} {'DPO step':>9}  "
          "fast paths")
    for name in args.families:
        with tempfile.TemporaryDirectory() as folder:
            r = measure(name, Path(folder))
        print(f"{name:<12} {r['sampling']:>12} {r['judging']:>9.1e} {r['ref_logps']:>10.1e} {r['bon']:>10.1e} "
              f"{r['dpo_step']:>9.1e}  {','.join(k for k, v in r['paths'].items() if v)}")


if __name__ == "__main__":
    main()
