"""Every fast path equals the plain transformers forward on each VLM family (tiny sharpened models, tests/families.py).

The truth is computed the way a user would without rlaifv: the chat template, the family's processor on one prompt
and one image, `model(**inputs)` in fp32. Each batch mixes images of three sizes and aspect ratios, so tile counts,
grids and image token counts differ between its rows. For the families listed in FAST, the fast path itself must be
the one that ran (engines.fastpath's verdict); for the others, the numbers must still be right, from the exact path.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from families import FAMILIES, build_family, family_images

from rlaifv.config import DPOConfig
from rlaifv.engines.base import Sampling
from rlaifv.engines.fastpath import report
from rlaifv.engines.hf import HFEngine
from rlaifv.logps.encode import PairEncoder
from rlaifv.logps.packed import ResponseGroup, group_logps, response_logps
from rlaifv.preferences import PreferenceExample
from rlaifv.records import Prompt
from rlaifv.train.dpo import read_metrics, train_dpo

# Families whose packing, shared prefill and image bank are verified exact; others run the exact path (fallback).
FAST = frozenset({"llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3", "gemma3", "internvl"})
QUESTIONS = ("Is there a red square in the image?", "Is the cat on the left of the dog?", "Is there a blue car?")
ANSWERS = ("There is a red square on the left.", "A cat sits near a small dog.")

pytestmark = pytest.mark.slow


REFUSED = frozenset({"paligemma"})  # prefix-LMs: an answer's log-probs depend on where the prompt ends


def test_a_prefix_lm_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="prefix-LM"):
        HFEngine(build_family("paligemma", tmp_path))


@pytest.fixture(scope="module", params=[f for f in FAMILIES if f not in REFUSED])
def engine(request, tmp_path_factory) -> HFEngine:
    folder = build_family(request.param, tmp_path_factory.mktemp(request.param))
    engine = HFEngine(folder)
    engine.family_name = request.param
    return engine


def _plain(engine: HFEngine, text: str, image) -> tuple[dict, torch.Tensor]:
    """The processor's inputs for one prompt and one image, and the model's logits (T, V) from a plain forward."""
    inputs = engine.process([text], [image], return_tensors="pt")
    with torch.no_grad():
        return inputs, engine.model(**inputs).logits[0].float()


def _plain_logp(engine: HFEngine, prompt_ids: list[int], full_text: str, image, response: list[int]) -> float:
    """Summed log-prob of `response` after the prompt, from a plain forward of the whole conversation."""
    inputs, logits = _plain(engine, full_text, image)
    ids = inputs["input_ids"][0].tolist()
    assert ids[: len(prompt_ids)] == prompt_ids and ids[len(prompt_ids) :] == response
    logps = logits[len(prompt_ids) - 1 : -1].log_softmax(-1)  # (L, V)
    return float(logps.gather(-1, torch.tensor(response)[:, None]).sum())


def _verdict(engine: HFEngine, path: str) -> bool:
    return report(engine.model)[path]["fast"]


def test_judging_equals_one_plain_forward_per_question(engine):
    images = family_images()
    groups = [(image, list(QUESTIONS[: 1 + i % 3]) + [QUESTIONS[0] + " Answer yes or no."]) for i, image in
              enumerate(images)]
    got = engine.yes_no_shared(groups, questions_per_pack=2, packs_per_forward=2)
    for (image, questions), row in zip(groups, got):
        for question, (p_yes, p_no) in zip(questions, row):
            probs = _plain(engine, engine.prompt_text(question), image)[1][-1].softmax(-1)
            assert p_yes == pytest.approx(float(probs[engine.yes_ids].sum()), abs=1e-5)
            assert p_no == pytest.approx(float(probs[engine.no_ids].sum()), abs=1e-5)
    assert _verdict(engine, "judge.packed") == (engine.family_name in FAST)


def test_shared_prefill_sampling_equals_generate_under_greedy_decoding(engine):
    images = family_images()
    questions = ["Describe the picture.", "What is in the image?", "Describe the picture briefly."]
    got = engine.sample(images, questions, 3, Sampling(max_new_tokens=6))
    for image, question, samples in zip(images, questions, got):
        inputs = engine.process([engine.prompt_text(question)], [image], return_tensors="pt")
        out = engine.model.generate(**inputs, max_new_tokens=6, do_sample=False)[0, inputs["input_ids"].shape[1] :]
        want = engine._decode(out[None])[0]
        assert samples == [want] * 3
    assert _verdict(engine, "sample.shared_prefill") == (engine.family_name in FAST)


def _examples() -> list[PreferenceExample]:
    return [PreferenceExample(f"k{i}", Prompt(f"p{i}", "", None, "", QUESTIONS[i], "test", {}),
                              ANSWERS[i % 2], ANSWERS[(i + 1) % 2]) for i in range(3)]


def test_reference_and_dpo_logps_equal_the_plain_forward(engine):
    images = family_images()
    encoder = PairEncoder(engine.processor, None)
    examples = _examples()
    pairs = [encoder(e, image) for e, image in zip(examples, images)]
    with torch.no_grad():
        got = response_logps(engine.model, pairs, engine.tokenizer.pad_token_id)
    for i, (example, pair, image) in enumerate(zip(examples, pairs, images)):
        _, chosen_text, rejected_text = encoder.texts(example)
        want_c = _plain_logp(engine, pair.prompt_ids, chosen_text, image, pair.chosen_ids)
        want_r = _plain_logp(engine, pair.prompt_ids, rejected_text, image, pair.rejected_ids)
        assert float(got.chosen[i]) == pytest.approx(want_c, rel=1e-4)
        assert float(got.rejected[i]) == pytest.approx(want_r, rel=1e-4)
    assert _verdict(engine, "logps.packed") == (engine.family_name in FAST)


def test_best_of_n_scores_equal_the_plain_forward(engine):
    images = family_images()
    encoder = PairEncoder(engine.processor, None)
    examples = _examples()
    pairs = [encoder(e, image) for e, image in zip(examples, images)]
    groups = [ResponseGroup(p.prompt_ids, [p.chosen_ids, p.rejected_ids, p.chosen_ids], p.vision) for p in pairs]
    got = group_logps(engine.model, groups, engine.tokenizer.pad_token_id, responses_per_pack=2, packs_per_batch=3)
    for example, pair, image, scores in zip(examples, pairs, images, got):
        _, chosen_text, rejected_text = encoder.texts(example)
        want_c = _plain_logp(engine, pair.prompt_ids, chosen_text, image, pair.chosen_ids)
        want_r = _plain_logp(engine, pair.prompt_ids, rejected_text, image, pair.rejected_ids)
        assert scores.tolist() == pytest.approx([want_c, want_r, want_c], rel=1e-4)
    assert _verdict(engine, "bon.packed") == (engine.family_name in FAST)


def test_a_dpo_step_with_two_pairs_per_batch_trains(engine, tmp_path):
    rows = []
    for i, image in enumerate(family_images()):
        image.save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "question": QUESTIONS[i], "chosen": ANSWERS[i % 2],
                     "rejected": ANSWERS[(i + 1) % 2]})
    rows.append({**rows[0], "chosen": rows[0]["rejected"], "rejected": rows[0]["chosen"], "question": "Describe."})
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DPOConfig(per_device_train_batch_size=2, gradient_accumulation_steps=1, max_steps=2, save_steps=100,
                    logging_steps=1, learning_rate=1e-3, warmup_ratio=0.0, report_to="none")
    summary = train_dpo(tmp_path / "pairs.jsonl", engine.path, tmp_path / "run", cfg)
    metrics = read_metrics(summary["metrics"])
    assert summary["quarantined"] == {} and summary["n_train"] == 4
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference before the first step
    assert all(math.isfinite(r["loss"]) for r in metrics) and metrics[-1]["loss"] != metrics[0]["loss"]
    assert Path(summary["model"]).exists()


def test_a_family_whose_fast_path_is_wrong_gets_the_exact_path_and_says_so(tmp_path, capsys):
    # a Qwen2-VL engine whose family facts lack M-RoPE stands for a family this project does not know: its packed
    # rows get plain 1-D positions, which the check must catch before a single number is used
    from rlaifv.engines.family import family_of

    engine = HFEngine(build_family("qwen2_vl", tmp_path))
    family_of(engine.model)._rope_owner = None
    image = family_images()[1]
    [row] = engine.yes_no_shared([(image, list(QUESTIONS))])
    verdict = engine.fast_paths()["judge.packed"]
    assert not verdict["fast"] and "differs from the plain forward" in verdict["reason"]
    assert "using the exact (unpacked) path" in " ".join(capsys.readouterr().err.split())  # the log, on stderr
    for question, (p_yes, _) in zip(QUESTIONS, row):  # the exact path's numbers
        probs = _plain(engine, engine.prompt_text(question), image)[1][-1].softmax(-1)
        assert p_yes == pytest.approx(float(probs[engine.yes_ids].sum()), abs=1e-5)
