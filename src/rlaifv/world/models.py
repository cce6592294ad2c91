"""Tiny VLMs of a real Hugging Face architecture, built from configs with a tokenizer trained locally.

The models are `LlavaForConditionalGeneration` (a CLIP vision tower, a two-layer projector and a Llama language
model) with a `LlavaProcessor`, saved with `save_pretrained`. Everything downstream loads them through
`AutoModelForImageTextToText` / `AutoProcessor`, exactly the path a user's LLaVA or Qwen-VL takes, so the demo
exercises the real code.

One vision patch covers one grid cell of the world (96-pixel images, 32-pixel patches): 9 image tokens per image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from rlaifv.world.config import TinyVLMConfig
from rlaifv.world.language import (
    DESCRIBE_INSTRUCTIONS,
    YES_NO_SUFFIX,
    describe,
    noisy_caption,
    sample_questions,
    true_mentions,
)
from rlaifv.world.render import IMAGE_SIZE
from rlaifv.world.scenes import sample_scenes

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", IMAGE_TOKEN]
# LLaVA-1.5's conversation shape. Content may be a string or a list of {"type": "image"|"text"} parts.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{{ part['text'] }}{% endfor %}{% endif %}"
    "{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _tokenizer_corpus(seed: int, n_scenes: int = 1500) -> list[str]:
    """Conversations in the world's language, in the chat template's shape, for training the BPE.

    Wrapping text in the template makes "USER:", "ASSISTANT:" and the answers " Yes" / " No" single tokens, so the
    labeler's verdict is one next-token distribution.
    """
    rng = np.random.default_rng(seed)
    lines = []
    for i, scene in enumerate(sample_scenes(seed, "train", n_scenes)):
        instruction = DESCRIBE_INSTRUCTIONS[i % len(DESCRIBE_INSTRUCTIONS)]
        lines.append(f"USER: <image>\n{instruction} ASSISTANT: {noisy_caption(scene, rng)}")
        lines.append(f"USER: {instruction} ASSISTANT: {describe(true_mentions(scene), rng)}")
        for q in sample_questions(scene, rng, 4):
            answer = "Yes" if q.answer else "No"
            lines.append(f"USER: <image>\n{q.question} {YES_NO_SUFFIX} ASSISTANT: {answer}")
            lines.append(f"USER: {q.question} ASSISTANT: {answer.lower()}")
    return lines


def build_tokenizer(seed: int, vocab_size: int = 800) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the world's language: every world word becomes one token, any text still encodes."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_corpus(seed), trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        chat_template=CHAT_TEMPLATE,
        model_max_length=256,
        padding_side="left",
    )
    return fast


def build_processor(tokenizer: PreTrainedTokenizerFast, cfg: TinyVLMConfig) -> LlavaProcessor:
    """LLaVA processor: CLIP preprocessing at the world's image size, `<image>` expanded to one token per patch."""
    from transformers import CLIPImageProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=cfg.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def num_image_tokens(cfg: TinyVLMConfig) -> int:
    return (IMAGE_SIZE // cfg.patch_size) ** 2


def build_model(tokenizer: PreTrainedTokenizerFast, cfg: TinyVLMConfig, seed: int) -> LlavaForConditionalGeneration:
    """A randomly initialised tiny LLaVA whose vocabulary matches the tokenizer."""
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden,
        intermediate_size=cfg.vision_hidden * 2,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=max(1, cfg.vision_hidden // 32),
        image_size=IMAGE_SIZE,
        patch_size=cfg.patch_size,
        projection_dim=cfg.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_intermediate,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=cfg.tie_embeddings,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=num_image_tokens(cfg),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=cfg.tie_embeddings,
    )
    model = LlavaForConditionalGeneration(config)
    set_generation_ids(model, tokenizer)
    return model


def set_generation_ids(model, tokenizer: PreTrainedTokenizerFast) -> None:
    """Pad, EOS and BOS ids in the generation config, so `generate` stops and pads without warnings."""
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id


_CLIP_MEAN = torch.tensor(CLIP_MEAN, dtype=torch.float32)
_CLIP_STD = torch.tensor(CLIP_STD, dtype=torch.float32)


def pixel_values(images: list, device: torch.device | str = "cpu") -> torch.Tensor:
    """CLIP normalisation of world images (already IMAGE_SIZE square), vectorised: (B, 3, H, W) float32.

    Equal to what the saved processor computes for these images; a test pins that. Training uses it because the
    processor's per-image PIL path would cost more than the training steps.
    """
    # uint8 stacked and put channels-first before any float exists, then the same float32 operations in the same
    # order as the processor: bit-equal, and the float tensor is written three times instead of five
    arr = torch.from_numpy(np.stack([np.asarray(im, dtype=np.uint8) for im in images]))  # (B, H, W, 3) uint8
    arr = arr.permute(0, 3, 1, 2).contiguous()  # (B, 3, H, W) uint8
    arr = arr.to(torch.float32).div_(255.0).sub_(_CLIP_MEAN.view(3, 1, 1)).div_(_CLIP_STD.view(3, 1, 1))
    return arr.to(device)  # (B, 3, H, W)


def save_vlm(model: LlavaForConditionalGeneration, processor: LlavaProcessor, path: Path) -> None:
    """Save in the standard layout (safetensors weights, configs, processor) that `from_pretrained` reads."""
    model.save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)


def word_token_id(tokenizer, word: str) -> int:
    """The single token of a world word as it appears inside a sentence (after a space); raises if it is not one."""
    ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"world word {word!r} must be one token, got {ids}")
    return ids[0]


def encode_prompt(tokenizer, question: str, n_image_tokens: int) -> tuple[int, ...]:
    """Token ids of a one-image user turn plus the generation prompt, `<image>` expanded as the processor does.

    Equal to `processor(text=..., images=...)["input_ids"]` for the chat-template text (a test pins it); used where
    thousands of prompts are encoded and the image itself is handled separately.
    """
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    out: list[int] = []
    for i in ids:
        out.extend([i] * n_image_tokens if i == image_id else [i])
    return tuple(out)
