"""The HF engine against plain transformers calls on the same tiny model."""

from __future__ import annotations

import torch

from rlaifv.engines.hf import HFEngine, Sampling, single_token_ids
from rlaifv.world.render import render
from rlaifv.world.scenes import sample_scenes


def test_yes_no_equals_the_full_forward_next_token_distribution(micro_world):
    engine = HFEngine(micro_world.labeler)
    scenes = sample_scenes(0, "test", 3)
    images = [render(s) for s in scenes]
    questions = ["Is there a fork?", "Is the cup red? Answer yes or no.", "Does the image contain a kite?"]
    got = engine.yes_no(images, questions)
    yes = single_token_ids(engine.tokenizer, ("Yes", " Yes", "yes", " yes"))
    no = single_token_ids(engine.tokenizer, ("No", " No", "no", " no"))
    assert yes and no
    for image, question, (p_yes, p_no) in zip(images, questions, got):
        enc = engine.processor(text=[engine.prompt_text(question)], images=[image], return_tensors="pt")
        with torch.no_grad():
            probs = torch.softmax(engine.model(**enc).logits[0, -1], -1)  # (V,), one unpadded prompt
        assert abs(p_yes - probs[yes].sum().item()) < 1e-5
        assert abs(p_no - probs[no].sum().item()) < 1e-5


def test_generate_matches_transformers_greedy(micro_world):
    engine = HFEngine(micro_world.policy)
    scene = sample_scenes(0, "test", 1)[0]
    question = "Describe this image in detail."
    [(text, n_tokens)] = engine.generate([render(scene)], [question], Sampling(max_new_tokens=12))
    enc = engine.processor(text=[engine.prompt_text(question)], images=[render(scene)], return_tensors="pt")
    with torch.no_grad():
        out = engine.model.generate(**enc, max_new_tokens=12, do_sample=False)[0, enc["input_ids"].shape[1] :]
    eos = engine.tokenizer.eos_token_id
    ids = out.tolist()
    ids = ids[: ids.index(eos)] if eos in ids else ids
    assert n_tokens == len(ids)
    assert text == engine.tokenizer.decode(ids, skip_special_tokens=True).strip()


def _greedy_reference(engine, image, question, max_new_tokens):
    enc = engine.processor(text=[engine.prompt_text(question)], images=[image], return_tensors="pt")
    with torch.no_grad():
        out = engine.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, enc["input_ids"].shape[1] :].tolist()


def test_shared_prefill_sampling_decodes_like_separate_greedy_generation(micro_world):
    # Greedy decoding makes every sample of a prompt equal to the plain one-prompt generate: any error in the
    # prefilled cache, its expansion or the positions under left padding changes the tokens.
    engine = HFEngine(micro_world.policy)
    scenes = sample_scenes(0, "test", 2)
    images = [render(s) for s in scenes]
    questions = ["Describe this image in detail.", "What do you see?"]  # different lengths: left padding
    got = engine.sample(images, questions, 3, Sampling(max_new_tokens=10))
    eos = engine.tokenizer.eos_token_id
    for image, question, samples in zip(images, questions, got):
        ids = _greedy_reference(engine, image, question, 10)
        ids = ids[: ids.index(eos)] if eos in ids else ids
        want = (engine.tokenizer.decode(ids, skip_special_tokens=True).strip(), len(ids))
        assert samples == [want] * 3


def test_sampling_is_seeded(micro_world):
    engine = HFEngine(micro_world.policy)
    images = [render(s) for s in sample_scenes(0, "test", 2)]
    questions = ["Describe this image in detail."] * 2
    setting = Sampling(max_new_tokens=16, do_sample=True, temperature=1.5)
    a = engine.sample(images, questions, 4, setting, seed=7)
    b = engine.sample(images, questions, 4, setting, seed=7)
    c = engine.sample(images, questions, 4, setting, seed=8)
    assert a == b
    assert a != c
    assert len({text for text, _ in a[0]}) > 1  # samples of one prompt differ in content


def test_packed_yes_no_equals_one_question_per_forward(micro_world):
    engine = HFEngine(micro_world.labeler)
    images = [render(s) for s in sample_scenes(0, "test", 2)]
    questions = [
        ["Is there a fork?", "Is the cup red? Answer yes or no.", "Does the image contain a kite in the sky?"],
        ["Is the ball at the top?", "Is there a tree?"],
    ]
    want = [engine.yes_no([image] * len(qs), qs) for image, qs in zip(images, questions)]
    for per_pack in (64, 2):  # one pack per image, and images split over several packs
        got = engine.yes_no_shared(list(zip(images, questions)), questions_per_pack=per_pack)
        for g_row, w_row in zip(got, want):
            assert len(g_row) == len(w_row)
            for (gy, gn), (wy, wn) in zip(g_row, w_row):
                assert abs(gy - wy) < 1e-4 and abs(gn - wn) < 1e-4
