"""Tiny random-weight VLMs of every family people align, for parity tests of the engine.

`build_family(name, folder)` builds one family from its transformers config classes (a few hundred thousand
parameters), with a tokenizer trained here, the family's tokenizer / image processor / processor classes and a chat
template that takes list-style content, and saves it with `save_pretrained`: `AutoModelForImageTextToText` and
`AutoProcessor` (or `rlaifv.engines.processors.load_processor` where the processor wants torchvision for video) load
it offline and give the same logits as the model built in memory.

The weights are sharpened: a random tiny model has nearly flat attention and next-token distributions, under which
wrong positions or a wrong attention mask barely move the output. The language model's queries and keys are scaled
(x8 each on the projections, so attention logits x64; x1.25 on the per-head q/k norms of Qwen3 and Gemma 3, whose
logits are O(1) already) and the output head x25, and zero-initialised weights outside norms get random ones, so such
mistakes show up as large changes in the log-probabilities the engine computes.

Images are kept small (32-72 px, patches of 4-8 px) so each image is a few dozen tokens at most, while the families
with variable resolution (Qwen-VL grids, LLaVA-NeXT tiles, Idefics3 splitting, InternVL crops) still give different
token / tile counts for `family_images()`'s three sizes and aspect ratios.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers

# Families that build and round-trip here. Tried and left out (see `FAILED`).
FAMILIES = (
    "llava",
    "llava_next",
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "idefics3",
    "gemma3",
    "internvl",
    "paligemma",
)
FAILED = {
    "mistral3": "PixtralProcessor is declared with @requires(backends=('torchvision', 'torch')) in transformers 5.25 "
    "(models/pixtral/processing_pixtral.py:38): without torchvision the class is a placeholder, so no processor "
    "can be built or loaded (the model itself builds from Mistral3Config + PixtralVisionConfig + MistralConfig)",
}

QK_SCALE = 8.0  # queries and keys each, on the projections: attention logits x64
QK_NORM_SCALE = 1.25  # where q and k are RMS-normalised per head (Qwen3, Gemma 3) logits are already O(1): x1.56
HEAD_SCALE = 25.0  # output head: next-token logits x25

# ---------------------------------------------------------------------------------------------------------------
# Images


def family_images() -> list[Image.Image]:
    """Three deterministic images of different sizes and aspect ratios (width x height): 32x32, 64x32, 40x72.

    Smooth colour ramps plus a few solid rectangles, so the vision towers see content, not noise or a blank.
    """
    out = []
    for i, (w, h) in enumerate([(32, 32), (64, 32), (40, 72)]):
        rng = np.random.default_rng(100 + i)
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        arr = np.stack([255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1), 128 + 127 * np.sin((x + y) / 5)], axis=-1)
        for _ in range(3):
            x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
            arr[y0 : y0 + int(rng.integers(4, 9)), x0 : x0 + int(rng.integers(4, 9))] = rng.integers(0, 256, 3)
        out.append(Image.fromarray(arr.clip(0, 255).astype(np.uint8), mode="RGB"))
    return out


QUESTIONS = (
    "Is there a red square in the image?",
    "Describe the picture.",
    "Is the cat on the left of the dog?",
)

# ---------------------------------------------------------------------------------------------------------------
# Tokenizers: a BPE trained here on a fixed English corpus, wrapped as the family's tokenizer class

_WORDS = (
    "the a an is are was there in on of to and or with without left right above below near next this that it "
    "image picture photo scene cat dog bird car bus tree house person man woman child table chair cup ball book "
    "red green blue yellow black white small large big little square circle triangle shape color colour "
    "one two three four many some no not any answer question describe what where how who which see shows show "
    "please briefly detail object objects sitting standing on under behind front top bottom side middle corner "
    "yes no Yes No true false I you we they he she can does do has have be been being look looks like"
).split()


def _corpus() -> list[str]:
    """Fixed lines: sentences of the word list, questions, and answers at line start and after a space.

    "Yes", "No", "yes", "no" each open many lines and follow a space in many others, so each form (with and without
    the leading space) becomes one token.
    """
    rng = np.random.default_rng(1234)
    lines = []
    for _ in range(400):
        n = int(rng.integers(4, 12))
        words = [_WORDS[int(j)] for j in rng.integers(0, len(_WORDS), n)]
        lines.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ","]))
    for q in QUESTIONS:
        lines.append(q)
    # the role words of the chat templates below, so that they are whole tokens too
    for _ in range(40):
        lines += ["USER: Is it red? ASSISTANT: Yes", "[INST] Is it red? [/INST] No", "User:", "Assistant:",
                  "user\nIs it red?\nassistant\nyes", "model\nno", "system\nYou are a helpful assistant."]
    for ans in ("Yes", "No", "yes", "no"):
        for _ in range(60):
            lines.append(ans)
            lines.append(f"{ans}.")
            lines.append(f"The answer is {ans}")
            lines.append(f"Answer {ans} or {ans.lower()}")
            lines.append(f"\n{ans}")
    return lines


BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]


@dataclass(frozen=True)
class _TokSpec:
    cls_name: str  # transformers tokenizer class
    specials: tuple[str, ...]  # special tokens, first ids, in this order
    kwargs: tuple  # (key, value) pairs for the tokenizer constructor (bos/eos/pad/unk/extra_special_tokens...)
    byte_level: bool  # byte-level BPE (GPT-2/Qwen/Llama-3 style) vs BPE with byte fallback (Llama-2/Gemma style)


def _train_bpe(spec: _TokSpec, vocab_size: int):
    """Train a BPE with the pre-tokenization the family's tokenizer class applies; return (vocab, merges)."""
    import transformers

    cls = getattr(transformers, spec.cls_name)
    if spec.byte_level and spec.cls_name in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        normalizer = None
        pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    elif spec.byte_level:
        proto = cls()._tokenizer  # the class's own pipeline (Qwen2: NFC + regex split + byte level)
        normalizer, pre = proto.normalizer, proto.pre_tokenizer
    else:
        proto = cls()._tokenizer
        normalizer = proto.normalizer  # Gemma: " " -> "▁"; Llama: none (Metaspace does it)
        # train on words that start at "▁", as sentencepiece does, so no merge crosses a word boundary
        prepend = "first" if spec.cls_name == "LlamaTokenizer" else "never"
        pre = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend, split=True)
    tok = Tokenizer(models.BPE(unk_token=None if spec.byte_level else "<unk>"))
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(spec.specials),
        # byte-level: all 256 byte symbols; byte fallback: printable ASCII (anything else falls back to <0xNN>)
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet() if spec.byte_level else [chr(i) for i in range(32, 127)],
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    trained = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    # specials first (in the given order), then the byte-fallback tokens where the class uses them, then the rest
    order = list(spec.specials) + ([] if spec.byte_level else BYTE_TOKENS)
    seen = set(order)
    order += [t for t, _ in trained if t not in seen]
    return {t: i for i, t in enumerate(order)}, merges


def _build_tokenizer(spec: _TokSpec, chat_template: str, vocab_size: int = 700):
    import transformers

    vocab, merges = _train_bpe(spec, vocab_size)
    kwargs = {"model_max_length": 512, **dict(spec.kwargs)}
    if spec.cls_name in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        from tokenizers import decoders, processors

        backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
        tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=chat_template, **kwargs)
    else:
        cls = getattr(transformers, spec.cls_name)
        tok = cls(vocab=vocab, merges=merges, chat_template=chat_template, **kwargs)
    # every special token is one unsplittable token (role markers like <|im_start|> too, not only the named ones)...
    missing = [s for s in spec.specials if s not in tok.all_special_tokens and s not in tok.get_added_vocab()]
    if missing:
        tok.add_tokens([AddedToken(s, special=True, normalized=False) for s in missing], special_tokens=True)
    # ... and keeps the id it has in the trained vocabulary
    for s in spec.specials:
        assert tok.convert_tokens_to_ids(s) == vocab[s], (s, tok.convert_tokens_to_ids(s), vocab[s])
    return tok


# ---------------------------------------------------------------------------------------------------------------
# Chat templates: list-style content, `add_generation_prompt`, the family's image placeholder

def _template(turn_user: str, image: str, turn_end: str, turn_assistant: str, gen: str, start: str = "") -> str:
    """A Jinja chat template: `start`, then per message its role's opening, its parts (images as `image`), `turn_end`;
    `gen` for `add_generation_prompt`."""
    return (
        start
        + "{% for message in messages %}"
        "{% if message['role'] == 'user' %}" + turn_user + "{% elif message['role'] == 'assistant' %}"
        + turn_assistant + "{% else %}{{ message['role'] }}: {% endif %}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}" + image + "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}" + turn_end + "{% endfor %}"
        "{% if add_generation_prompt %}" + gen + "{% endif %}"
    )


# ---------------------------------------------------------------------------------------------------------------
# Per-family builders: (tokenizer, processor, model)

# language model shape shared by all families: head_dim 32
TEXT = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=512
)


def _gen_ids(model, tok) -> None:
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id


_LLAMA2_TOK = _TokSpec(
    "LlamaTokenizer",
    ("<unk>", "<s>", "</s>", "<pad>", "<image>"),
    (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"), ("pad_token", "<pad>"),
     ("extra_special_tokens", {"image_token": "<image>"}), ("padding_side", "left")),
    byte_level=False,
)


def _llava(seed: int):
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    # LLaVA-1.5's conversation shape ("USER: <image>\n... ASSISTANT:"); the tokenizer adds <s>
    template = _template("USER: ", "<image>\n", " ", "ASSISTANT: ", "ASSISTANT:")
    tok = _build_tokenizer(_LLAMA2_TOK, template)
    ip = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=template)
    torch.manual_seed(seed)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=32, patch_size=8, projection_dim=32),
        text_config=LlamaConfig(vocab_size=len(tok), **TEXT, num_key_value_heads=2, bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=16,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    return tok, proc, LlavaForConditionalGeneration(cfg)


def _llava_next(seed: int):
    from transformers import (
        CLIPVisionConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
        MistralConfig,
    )

    # LLaVA-NeXT (Mistral-7B) conversation shape: "[INST] <image>\n... [/INST]"
    template = _template("[INST] ", "<image>\n", " [/INST]", " ", "", start="")
    tok = _build_tokenizer(_LLAMA2_TOK, template)
    pinpoints = [[32, 64], [64, 32], [64, 64]]
    ip = LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                    image_grid_pinpoints=pinpoints)
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                              num_additional_image_tokens=1, chat_template=template)
    torch.manual_seed(seed)
    cfg = LlavaNextConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=32, patch_size=8, projection_dim=32),
        # LLaVA-NeXT's Mistral-7B-Instruct-v0.2 has no sliding window (MistralConfig defaults to 4096)
        text_config=MistralConfig(vocab_size=len(tok), **TEXT, num_key_value_heads=1, sliding_window=None,
                                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        image_seq_length=16,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    return tok, proc, LlavaNextForConditionalGeneration(cfg)


_QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
_QWEN_TOK = _TokSpec(
    "Qwen2Tokenizer",
    _QWEN_SPECIALS,
    (("eos_token", "<|im_end|>"), ("pad_token", "<|endoftext|>"), ("unk_token", None), ("bos_token", None),
     ("extra_special_tokens", list(_QWEN_SPECIALS[1:])), ("padding_side", "left")),
    byte_level=True,
)
_QWEN_TEMPLATE = _template(
    "<|im_start|>user\n", "<|vision_start|><|image_pad|><|vision_end|>", "<|im_end|>\n", "<|im_start|>assistant\n",
    "<|im_start|>assistant\n",
)


def _qwen_image_processor():
    from transformers import Qwen2VLImageProcessorPil

    # patch 8, merge 2: one LM token per 16x16 pixels; no resizing for images between 16x16 and 80x80 (rounded to 16)
    return Qwen2VLImageProcessorPil(patch_size=8, merge_size=2, temporal_patch_size=2,
                                    size={"shortest_edge": 16 * 16, "longest_edge": 80 * 80})


def _qwen_ids(tok) -> dict:
    return dict(
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )


def _qwen_text(tok, **extra) -> dict:
    return dict(vocab_size=len(tok), **TEXT, num_key_value_heads=1, bos_token_id=None,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **extra)


def _qwen(seed: int, names: tuple[str, str, str], vision_config: dict, **text_extra):
    """A tiny Qwen-VL of the family whose (config, model, processor) class names are `names`: the three share the
    tokenizer, template, image processor and ids, and differ in their vision towers and rope settings."""
    import transformers

    from rlaifv.engines.processors import processor_without_video

    config_cls, model_cls, processor_cls = (getattr(transformers, n) for n in names)
    tok = _build_tokenizer(_QWEN_TOK, _QWEN_TEMPLATE)
    proc = processor_without_video(processor_cls)(image_processor=_qwen_image_processor(), tokenizer=tok,
                                                  chat_template=_QWEN_TEMPLATE)
    torch.manual_seed(seed)
    cfg = config_cls(vision_config=vision_config, text_config=_qwen_text(tok, **text_extra), **_qwen_ids(tok),
                     tie_word_embeddings=False)
    return tok, proc, model_cls(cfg)


_MROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]}


def _qwen2_vl(seed: int):
    return _qwen(seed, ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor"),
                 dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=8,
                      spatial_merge_size=2, temporal_patch_size=2), rope_parameters=_MROPE)


def _qwen2_5_vl(seed: int):
    # window 32 px = 2x2 merged tokens: the 64x32 and 40x72 images span several windows; block 1 is full attention
    return _qwen(seed, ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor"),
                 dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=8,
                      spatial_merge_size=2, temporal_patch_size=2, window_size=32, fullatt_block_indexes=[1]),
                 rope_parameters=_MROPE)


def _qwen3_vl(seed: int):
    # deepstack: vision layer 0's merged features are added to the LM's first layer at the image positions
    return _qwen(seed, ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor"),
                 dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=8,
                      spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                      deepstack_visual_indexes=[0]),
                 head_dim=32, rope_parameters={**_MROPE, "mrope_section": [6, 5, 5], "mrope_interleaved": True})


def _idefics3(seed: int):
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        LlamaConfig,
    )

    specials = (("<|begin_of_text|>", "<end_of_utterance>", "<|finetune_right_pad_id|>", "<unk>",
                 "<fake_token_around_image>", "<image>", "<global-img>")
                + tuple(f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)))
    spec = _TokSpec(
        "PreTrainedTokenizerFast",
        specials,
        (("bos_token", "<|begin_of_text|>"), ("eos_token", "<end_of_utterance>"),
         ("pad_token", "<|finetune_right_pad_id|>"), ("unk_token", "<unk>"),
         ("extra_special_tokens", list(specials[4:])), ("padding_side", "left"), ("add_bos_token", True)),
        byte_level=True,
    )
    # Idefics3's conversation shape: "User:<image>...<end_of_utterance>\nAssistant:"; the tokenizer adds the BOS
    template = _template("User:", "<image>", "<end_of_utterance>\n", "Assistant:", "Assistant:")
    tok = _build_tokenizer(spec, template)
    # tiles of 32 px (the vision tower's size), images first resized to a longest edge of 64: up to 2x2 tiles + global
    ip = Idefics3ImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32},
                                   do_image_splitting=True)
    # 32 px / patch 8 = 16 patches, pixel shuffle by 2: 4 tokens per tile
    proc = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=4, chat_template=template)
    torch.manual_seed(seed)
    cfg = Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        text_config=LlamaConfig(vocab_size=len(tok), **TEXT, num_key_value_heads=1, bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=2,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
    )
    return tok, proc, Idefics3ForConditionalGeneration(cfg)


_GEMMA_BASE = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")


def _gemma3(seed: int):
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    specials = _GEMMA_BASE + ("<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                              "<image_soft_token>")
    spec = _TokSpec(
        "GemmaTokenizer",
        specials,
        (("bos_token", "<bos>"), ("eos_token", "<eos>"), ("pad_token", "<pad>"), ("unk_token", "<unk>"),
         ("mask_token", "<mask>"), ("add_bos_token", True), ("padding_side", "left"),
         ("extra_special_tokens", {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                   "image_token": "<image_soft_token>", "sot_token": "<start_of_turn>",
                                   "eot_token": "<end_of_turn>"})),
        byte_level=False,
    )
    # Gemma 3's conversation shape; the image placeholder is <start_of_image>, which the processor expands
    template = _template("<start_of_turn>user\n", "<start_of_image>", "<end_of_turn>\n", "<start_of_turn>model\n",
                         "<start_of_turn>model\n")
    tok = _build_tokenizer(spec, template)
    ip = Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
    proc = Gemma3Processor(image_processor=ip, tokenizer=tok, image_seq_length=16, chat_template=template)
    torch.manual_seed(seed)
    text = Gemma3TextConfig(
        vocab_size=len(tok), **TEXT, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
        # sliding window longer than an image's 16 tokens, shorter than a prompt: the window matters in tests
        sliding_window=24, layer_types=["sliding_attention", "full_attention"],
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    cfg = Gemma3Config(
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=32, patch_size=8, vision_use_head=False),
        text_config=text,
        mm_tokens_per_image=16,
        boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
        tie_word_embeddings=False,
    )
    return tok, proc, Gemma3ForConditionalGeneration(cfg)


def _internvl(seed: int):
    from transformers import (
        GotOcr2ImageProcessorPil,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        Qwen2Config,
    )

    from rlaifv.engines.processors import processor_without_video

    specials = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>")
    spec = _TokSpec(
        "Qwen2Tokenizer",
        specials,
        (("eos_token", "<|im_end|>"), ("pad_token", "<|endoftext|>"), ("unk_token", None), ("bos_token", None),
         ("extra_special_tokens", {"start_image_token": "<img>", "end_image_token": "</img>",
                                   "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}),
         ("padding_side", "left")),
        byte_level=True,
    )
    template = _template("<|im_start|>user\n", "<IMG_CONTEXT>\n", "<|im_end|>\n", "<|im_start|>assistant\n",
                         "<|im_start|>assistant\n")
    tok = _build_tokenizer(spec, template)
    # tiles of 32 px, 1 to 4 per image chosen by aspect ratio, plus a thumbnail when there is more than one
    ip = GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}, crop_to_patches=True, min_patches=1, max_patches=4)
    # 32 px / patch 4 = 8x8 patches, pixel shuffle 0.5: 16 tokens per tile
    proc = processor_without_video(InternVLProcessor)(image_processor=ip, tokenizer=tok, image_seq_length=16,
                                                       chat_template=template)
    torch.manual_seed(seed)
    cfg = InternVLConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=[32, 32], patch_size=[4, 4]),
        text_config=Qwen2Config(vocab_size=len(tok), **TEXT, num_key_value_heads=1, bos_token_id=None,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                tie_word_embeddings=False),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=16,
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )
    return tok, proc, InternVLForConditionalGeneration(cfg)


def _paligemma(seed: int):
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessorPil,
        SiglipVisionConfig,
    )

    specials = _GEMMA_BASE + ("<image>",)
    spec = _TokSpec(
        "GemmaTokenizer",
        specials,
        (("bos_token", "<bos>"), ("eos_token", "<eos>"), ("pad_token", "<pad>"), ("unk_token", "<unk>"),
         ("mask_token", "<mask>"), ("extra_special_tokens", {"image_token": "<image>"}), ("padding_side", "left")),
        byte_level=False,
    )
    # PaliGemma has no chat format: "<image>" then the prompt; the processor inserts <bos> and the closing "\n"
    template = _template("", "<image>", "", "", "")
    tok = _build_tokenizer(spec, template)
    ip = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    ip.image_seq_length = 16
    proc = PaliGemmaProcessor(image_processor=ip, tokenizer=tok, chat_template=template)  # adds 1152 <loc>/<seg>
    torch.manual_seed(seed)
    cfg = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=32, patch_size=8, projection_dim=64),
        text_config=GemmaConfig(vocab_size=len(tok), **TEXT, num_key_value_heads=1, head_dim=32,
                                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                pad_token_id=tok.pad_token_id, tie_word_embeddings=False),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        projection_dim=64,
        tie_word_embeddings=False,
    )
    return tok, proc, PaliGemmaForConditionalGeneration(cfg)


_BUILDERS = {
    "llava": _llava,
    "llava_next": _llava_next,
    "qwen2_vl": _qwen2_vl,
    "qwen2_5_vl": _qwen2_5_vl,
    "qwen3_vl": _qwen3_vl,
    "idefics3": _idefics3,
    "gemma3": _gemma3,
    "internvl": _internvl,
    "paligemma": _paligemma,
}

# ---------------------------------------------------------------------------------------------------------------
# Sharpening


def _scale_norm_(norm: torch.nn.Module, factor: float) -> None:
    """Scale an RMSNorm's output by `factor`; Gemma-style norms multiply by (1 + weight)."""
    w = norm.weight
    if "Gemma" in type(norm).__name__:
        w.copy_(factor * (1 + w) - 1)
    else:
        w.mul_(factor)


@torch.no_grad()
def sharpen(model, qk_scale: float = QK_SCALE, head_scale: float = HEAD_SCALE, qk_norm_scale: float = QK_NORM_SCALE,
            seed: int = 0) -> None:
    """Make attention and next-token distributions far from flat, in place.

    Queries and keys of every language-model attention layer x`qk_scale` (on the q/k RMSNorm where the family
    normalises q and k after projecting: Qwen3, Gemma 3, x`qk_norm_scale` there), the output head x`head_scale`;
    zero-initialised weights outside norm layers get random N(0, 0.02) weights.
    """
    lm = model.model.get_decoder()  # language_model, or text_model (Idefics3)
    for layer in lm.layers:
        attn = layer.self_attn
        if getattr(attn, "q_norm", None) is not None:
            _scale_norm_(attn.q_norm, qk_norm_scale)
            _scale_norm_(attn.k_norm, qk_norm_scale)
        else:
            for proj in (attn.q_proj, attn.k_proj):
                proj.weight.mul_(qk_scale)
                if proj.bias is not None:
                    proj.bias.mul_(qk_scale)
    model.lm_head.weight.mul_(head_scale)
    # zero-initialised weights outside norms (Gemma 3's projector; InternVL's vision CLS token and position
    # embeddings) would make the image path blind to content or position: give them N(0, 0.02) weights
    gen = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if "Norm" in type(module).__name__:
            continue  # Gemma-style norms are zero by design: they scale by (1 + weight)
        for pname, p in module.named_parameters(recurse=False):
            if not pname.endswith("bias") and p.numel() > 1 and p.abs().max() == 0:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


# ---------------------------------------------------------------------------------------------------------------
# Public API


def make_family(name: str, seed: int = 0):
    """(model, processor) of a tiny sharpened `name` model, in memory, in eval mode."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown family {name!r}; known: {FAMILIES}")
    tok, proc, model = _BUILDERS[name](seed)
    sharpen(model, seed=seed)
    _gen_ids(model, tok)
    model.eval()
    return model, proc


def build_family(name: str, folder: Path, seed: int = 0) -> Path:
    """Build a tiny `name` model and save model, tokenizer, image processor, processor and template into `folder`."""
    model, proc = make_family(name, seed)
    save_family(model, proc, folder)
    return Path(folder)


# video processor a checkpoint of the family ships (its processor has a video slot)
VIDEO_PROCESSORS = {
    "qwen2_vl": "Qwen2VLVideoProcessor",
    "qwen2_5_vl": "Qwen2VLVideoProcessor",
    "qwen3_vl": "Qwen3VLVideoProcessor",
    "internvl": "InternVLVideoProcessor",
}


def save_family(model, processor, folder: Path) -> None:
    """`save_pretrained` of model and processor, plus the video processor's settings where the family has one."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    video = VIDEO_PROCESSORS.get(model.config.model_type)
    if video is not None:
        _write_video_processor(folder, video, processor.image_processor)


def _write_video_processor(folder: Path, class_name: str, image_processor) -> None:
    """Record a video processor in processor_config.json the way transformers 5.x nests sub-processors.

    Real checkpoints of these families ship one, so `AutoProcessor` builds it (with torchvision) or fails on it
    (without): the folder behaves like a downloaded checkpoint. Video processors cannot be instantiated without
    torchvision, so the settings (those of the image processor: same patching and normalisation) are written directly.
    """
    keys = ("do_convert_rgb", "do_normalize", "do_rescale", "do_resize", "image_mean", "image_std", "merge_size",
            "patch_size", "resample", "rescale_factor", "size", "temporal_patch_size")
    settings = {k: v for k, v in image_processor.to_dict().items() if k in keys and v is not None}
    path = folder / "processor_config.json"
    config = json.loads(path.read_text())
    config["video_processor"] = {**settings, "video_processor_type": class_name}
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


# families whose processor needs one list of images per prompt (`[[im0], [im1], ...]`) for a batch: Gemma 3 reads a
# flat list as all images of one prompt. The others take a flat list or the nested one alike (checked for these).
NESTED_IMAGES = {"gemma3"}


def prompt_texts(processor, questions) -> list[str]:
    """Each question as a one-image user turn, through the processor's chat template, with the generation prompt."""
    return [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for q in questions
    ]


def family_inputs(name: str, processor, images=None, questions=QUESTIONS):
    """Processor outputs (pt tensors, left padding) for one image per prompt.

    As the processor returns them: PaliGemma's also hold `labels` (kept for backward compatibility; a forward with
    them computes a loss too)."""
    images = family_images() if images is None else images
    texts = prompt_texts(processor, questions[: len(images)])
    imgs = [[im] for im in images] if name in NESTED_IMAGES else list(images)
    return processor(images=imgs, text=texts, return_tensors="pt", padding=True)



def tiles_per_image(name: str, processor, inputs) -> list[int] | None:
    """Number of vision-tower crops each image was cut into, for the tiling families (None for the others).

    LLaVA-NeXT and Idefics3 pad the per-image tile dimension to the batch's largest (all-zero tiles; Idefics3 marks
    the real ones in `pixel_attention_mask`); InternVL flattens all images' tiles into the first dimension and puts
    `image_seq_length` tokens per tile in the text.
    """
    if name == "llava_next":
        return (inputs["pixel_values"].flatten(2).abs().sum(-1) > 0).sum(1).tolist()
    if name == "idefics3":
        return inputs["pixel_attention_mask"].flatten(2).any(-1).sum(1).tolist()
    if name == "internvl":
        per_row = (inputs["input_ids"] == processor.image_token_id).sum(1)
        return (per_row // processor.image_seq_length).tolist()
    return None
