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
