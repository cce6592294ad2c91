"""Tiny VLMs: a real HF architecture that loads offline through the Auto classes, with an exact fast path."""

from __future__ import annotations

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from rlaifv.world.config import WorldConfig
from rlaifv.world.language import DESCRIBE_INSTRUCTIONS
from rlaifv.world.models import (
    build_model,
    build_processor,
    build_tokenizer,
    encode_prompt,
    num_image_tokens,
    pixel_values,
    save_vlm,
)
from rlaifv.world.render import render
from rlaifv.world.scenes import CATEGORIES, COLORS, sample_scenes


def _parts():
    cfg = WorldConfig.preset("micro")
    tok = build_tokenizer(0)
    return cfg, tok, build_processor(tok, cfg.policy_model), build_model(tok, cfg.policy_model, 0)


def test_world_words_and_verdicts_are_single_tokens():
    tok = build_tokenizer(0)
    for word in (*CATEGORIES, *COLORS, "small", "large", "Yes", "No", "yes", "no"):
        assert len(tok(" " + word, add_special_tokens=False)["input_ids"]) == 1, word
    # any text still encodes (byte-level) and decodes back
    text = "Zebra crossing! 123 ünïcode"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_fast_prompt_encoding_equals_the_processor():
    cfg, tok, proc, _ = _parts()
    images = [render(s) for s in sample_scenes(0, "test", 3)]
    for question in (DESCRIBE_INSTRUCTIONS[0], "Is there a fork? Answer yes or no."):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        text = proc.apply_chat_template(messages, add_generation_prompt=True)
        enc = proc(text=[text], images=images[:1], return_tensors="pt")
        assert tuple(enc["input_ids"][0].tolist()) == encode_prompt(tok, question, num_image_tokens(cfg.policy_model))
    enc = proc(text=["<image>"] * 3, images=images, return_tensors="pt")
    torch.testing.assert_close(pixel_values(images), enc["pixel_values"], atol=1e-5, rtol=0)


def test_save_load_round_trip_offline_gives_identical_logits_and_generation(tmp_path):
    cfg, tok, proc, model = _parts()
    save_vlm(model, proc, tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    loaded_proc = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "LlavaForConditionalGeneration"
    images = [render(s) for s in sample_scenes(0, "test", 2)]
    text = loaded_proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}],
        add_generation_prompt=True,
    )
    enc = loaded_proc(text=[text, text], images=images, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**enc).logits, loaded(**enc).logits)
        a = model.generate(**enc, max_new_tokens=8, do_sample=False)
        b = loaded.generate(**enc, max_new_tokens=8, do_sample=False)
    assert torch.equal(a, b) and a.shape[1] == enc["input_ids"].shape[1] + 8 or torch.equal(a, b)
    # the image matters: two different scenes give different next-token logits
    assert not torch.allclose(loaded(**enc).logits[0, -1], loaded(**enc).logits[1, -1])


def test_model_init_is_deterministic_per_seed():
    cfg, tok, _, _ = _parts()
    a, b = build_model(tok, cfg.policy_model, 5), build_model(tok, cfg.policy_model, 5)
    c = build_model(tok, cfg.policy_model, 6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
