"""The HF engine against plain transformers calls on the same tiny model."""

from __future__ import annotations

import torch

from rlaifv.engines.base import Sampling
from rlaifv.engines.decode import _next_tokens
from rlaifv.engines.hf import HFEngine, single_token_ids
from rlaifv.engines.images import ImageBank, concat_vision, takes_image_features
from rlaifv.world.language import DESCRIBE_INSTRUCTIONS
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
    # one pack per image; images split over several packs; packs ordered by length over single-row forwards
    for per_pack, per_forward in ((64, 8), (2, 8), (2, 1)):
        got = engine.yes_no_shared(list(zip(images, questions)), per_pack, per_forward)
        for g_row, w_row in zip(got, want):
            assert len(g_row) == len(w_row)
            for (gy, gn), (wy, wn) in zip(g_row, w_row):
                assert abs(gy - wy) < 1e-4 and abs(gn - wn) < 1e-4


def test_images_encoded_once_give_every_row_its_own_images_features(micro_world):
    engine = HFEngine(micro_world.labeler)
    images = [render(s) for s in sample_scenes(0, "test", 2)]
    (rows_a, vision_a), (rows_b, vision_b) = engine.encode_groups([(images[0], ["Is there a cup?"]),
                                                                   (images[1], ["Is there a cup?"])])
    assert rows_a == rows_b and takes_image_features(engine.model, vision_a)
    ids = torch.tensor([rows_a[0]] * 3)  # (3, T): one prompt, shown with images 0, 1, 0
    order = [0, 1, 0]
    with torch.no_grad():
        want = engine.model(input_ids=ids, **concat_vision([[vision_a, vision_b][i] for i in order], "cpu")).logits
        bank = ImageBank(engine.model, [vision_a, vision_b], "cpu")
        got = engine.model(input_ids=ids, **bank.inputs(order)).logits  # (3, T, V)
    assert "mm_encoder_outputs" in bank.inputs(order)  # the features path, not pixels per row
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got[0], got[1], atol=1e-3)  # the rows really see different images


def test_prompt_texts_equal_the_chat_template_rendered_per_question(micro_world):
    engine = HFEngine(micro_world.labeler)
    questions = ["Is there a cup?", "Is the cup red? Answer yes or no.", " padded question ", "Tell me {about} it."]
    assert engine.prompt_texts(questions) == [engine.prompt_text(q) for q in questions]
    assert engine.prompt_texts([]) == []


def test_rows_that_finish_early_leave_the_batch_without_changing_any_answer(micro_world):
    # A randomised language model writes different token strings per prompt; with a stop token that they reach at
    # different steps, finished rows are dropped from the batch and the cache while the others go on. Each answer
    # must still equal its own one-prompt generate, cut at the stop token.
    engine = HFEngine(micro_world.policy)
    torch.manual_seed(3)
    for p in engine.model.model.language_model.parameters():
        p.data.normal_(0, 0.3)
    images = [render(s) for s in sample_scenes(0, "test", 6)]
    questions = list(DESCRIBE_INSTRUCTIONS[:6])  # of different lengths: left padding
    # the reference `generate` stops at the model's EOS, so the engine stops there too, and at the chosen token
    eos = engine.model.generation_config.eos_token_id
    eos = {eos} if isinstance(eos, int) else set(eos or ())
    refs = [_greedy_reference(engine, image, question, 30) for image, question in zip(images, questions)]

    def first_stop(row, stops):
        return min((row.index(t) for t in stops if t in row), default=len(row))

    stop = max(sorted({t for r in refs for t in r} - eos), key=lambda t: len({first_stop(r, {t} | eos) for r in refs}))
    engine.stop_ids = {stop} | eos
    got = engine.sample(images, questions, 2, Sampling(max_new_tokens=30))
    lengths = {first_stop(r, engine.stop_ids) for r in refs}
    assert len(lengths) >= 3  # rows do finish apart
    for ref, samples in zip(refs, got):
        ids = ref[: first_stop(ref, engine.stop_ids)]
        assert samples == [(engine.tokenizer.decode(ids, skip_special_tokens=True).strip(), len(ids))] * 2


def test_sampled_tokens_follow_temperature_and_top_p():
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(20000, 1)  # (20000, 4)
    t = 0.7
    want = torch.softmax(logits[0] / t, -1)
    got = torch.bincount(_next_tokens(logits, t, 1.0), minlength=4) / 20000
    assert torch.allclose(got, want, atol=0.015)
    # top-p keeps the smallest set of most likely tokens whose mass reaches p: here the first two at T=1
    got = torch.bincount(_next_tokens(logits, 1.0, 0.75), minlength=4) / 20000
    assert got[2:].sum() == 0 and torch.allclose(got[:2], torch.tensor([0.625, 0.375]), atol=0.015)
    assert torch.equal(_next_tokens(logits[:3], None, 1.0), torch.zeros(3, dtype=torch.long))  # greedy
