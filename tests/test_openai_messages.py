"""How a preference pair's prompt becomes OpenAI chat messages for a served model (no server needed)."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from rlaifv.engines.openai_vlm import prompt_messages
from rlaifv.preferences import PreferenceExample
from rlaifv.records import BadInput, Prompt


def _example(**changes) -> PreferenceExample:
    prompt = Prompt("p0", "", None, "", "Describe the image.", "test", {})
    return PreferenceExample("k", prompt, "A cup.", "A fork.", **changes)


def _decoded(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def test_one_user_turn_puts_the_image_before_the_question():
    image = Image.new("RGB", (8, 8), (255, 0, 0))
    [turn] = prompt_messages(_example(), image)
    assert turn["role"] == "user" and turn["content"][1] == {"type": "text", "text": "Describe the image."}
    assert _decoded(turn["content"][0]["image_url"]["url"]).getpixel((0, 0)) == (255, 0, 0)


def test_conversation_turns_keep_their_order_and_the_image_placeholder_becomes_the_image():
    image = Image.new("RGB", (8, 8), (0, 0, 255))
    turns = [{"role": "system", "content": "Be brief."},
             {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
             {"role": "assistant", "content": [{"type": "text", "text": "A square."}]},
             {"role": "user", "content": [{"type": "text", "text": "Which color?"}]}]
    out = prompt_messages(_example(messages=turns), image)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert out[0] == turns[0] and out[2] == turns[2] and out[3] == turns[3]
    assert out[1]["content"][1] == {"type": "text", "text": "What is it?"}
    assert _decoded(out[1]["content"][0]["image_url"]["url"]).getpixel((0, 0)) == (0, 0, 255)
    assert turns[1]["content"][0] == {"type": "image"}  # the example itself is left as it was


def test_a_prompt_given_as_final_text_cannot_go_to_a_server():
    with pytest.raises(BadInput, match="chat turns"):
        prompt_messages(_example(formatted=True), Image.new("RGB", (8, 8)))
