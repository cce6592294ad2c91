"""What a VLM family needs for a row the processor never built: positions, token types, attention, image tensors.

Every fast path of the engine (judging packs, DPO's packed pairs, best-of-N packs, the shared prefill of sampling)
feeds the model rows that no processor call produced: one image+prompt prefix followed by several continuations,
or padded batches of prompts whose images differ in size. A plain forward lets the model derive what it needs from
its own inputs; for those rows it must be handed what the model would have derived for each continuation read
alone. That differs by family:

- positions: most language models count tokens (0, 1, 2, ...); Qwen2/2.5/3-VL use 3-D M-RoPE positions that the
  model builds with its own `get_rope_index` from the image grid, and text after an image continues at the largest
  grid position + 1, not at the token count. `positions` asks the model's own rope index for each row's prefix and
  continues every continuation from there, as a sequence of prefix + that continuation alone would.
- text-aligned processor outputs (`mm_token_type_ids`, Gemma3's `token_type_ids`) mark which token is an image
  token; they are built for the row from its ids (`token_types`), never concatenated like image tensors.
- attention: a packed row's block mask (engines.packing) replaces the mask the model would build; where the model
  lets image tokens attend to each other both ways (Gemma3), the block keeps that, and layers with a sliding window
  get their own mask with the window counted in each continuation's own positions.
- image tensors whose shape varies per image (LLaVA-NeXT's and Idefics3's tiles, pixel masks) are zero-padded to one
  shape before they are stacked: both families drop padded tiles by themselves (image sizes, all-zero tiles).

What a family does that this module does not know is caught by engines.fastpath, which compares each fast path with
the plain forward on the run's first items and falls back to the plain path if they differ.
"""

from __future__ import annotations

import inspect
import weakref
from typing import Any

import torch

from rlaifv.engines.packing import Pack, additive_mask, allowed_blocks, pad_packs
from rlaifv.engines.transfer import to_device

# Processor outputs with one value per text token: built per row from the ids, never stacked as image tensors.
TEXT_ALIGNED_KEYS = ("mm_token_type_ids", "token_type_ids")
# Families whose language model lets the tokens of one image attend to each other in both directions.
BIDIRECTIONAL_IMAGE_FAMILIES = frozenset({"gemma3"})
# Families whose answers cannot be scored as a continuation of the prompt, and why.
UNSUPPORTED = {
    "paligemma": "a prefix-LM: it attends both ways over the whole prompt and its token_type_ids mark which tokens "
    "are the answer, so an answer's log-probs depend on how the caller splits prompt and answer; rlaifv scores "
    "answers as continuations of a causal prompt and does not support it",
}

Vision = dict[str, torch.Tensor]  # one image's processor outputs (pixel_values, image_sizes, ...), batch dim 1


def vision_of(outputs: Any) -> Vision:
    """A processor output without its text: what describes the images (pixel values, grids, sizes, masks)."""
    return {k: v for k, v in outputs.items() if k not in ("input_ids", "attention_mask", *TEXT_ALIGNED_KEYS)}


def _pad_to(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """`t` zero-padded at the end of every dimension but the first to `shape` (shape[0] ignored)."""
    pad: list[int] = []
    for have, want in zip(reversed(t.shape[1:]), reversed(shape[1:])):
        pad += [0, want - have]
    return torch.nn.functional.pad(t, pad) if any(pad) else t


def concat_vision(visions: list[Vision], device: torch.device | str) -> dict[str, torch.Tensor]:
    """The processor outputs of several images (or rows) as one batch, concatenated along the first dimension.

    Per-image tensors of different shapes (a tile dimension that depends on the aspect ratio) are zero-padded to
    the largest: the processor itself pads that way within one call, and the families that tile read the real tile
    count from the image sizes or skip all-zero tiles.
    """
    out = {}
    for key in visions[0]:
        tensors = [v[key] for v in visions]
        if len({t.shape[1:] for t in tensors}) > 1:
            if len({t.dim() for t in tensors}) > 1:
                raise ValueError(f"processor output {key!r} has a different number of dimensions per image")
            shape = tuple(max(sizes) for sizes in zip(*(t.shape for t in tensors)))
            tensors = [_pad_to(t, shape) for t in tensors]
        out[key] = to_device(torch.cat(tensors), device)
    return out


def _accepted(fn: Any) -> set[str]:
    return set(inspect.signature(fn).parameters)


class Family:
    """The facts about one loaded model that rows built outside its processor need (see the module docstring)."""

    def __init__(self, model: torch.nn.Module) -> None:
        config = model.config
        self.model_type = getattr(config, "model_type", "")
        if self.model_type in UNSUPPORTED:
            raise ValueError(f"{self.model_type}: {UNSUPPORTED[self.model_type]}")
        self.image_token_id = getattr(config, "image_token_id", None)
        if self.image_token_id is None:
            self.image_token_id = getattr(config, "image_token_index", None)
        self.video_token_id = getattr(config, "video_token_id", None)
        self._rope_owner = next((m for m in model.modules() if callable(getattr(m, "get_rope_index", None))), None)
        self.rope_args = _accepted(self._rope_owner.get_rope_index) if self._rope_owner is not None else set()
        forward = _accepted(model.forward)
        # the text-aligned inputs the model reads (named parameters only: many forwards take **kwargs)
        self.aligned_keys = tuple(k for k in TEXT_ALIGNED_KEYS if k in forward)
        self.bidirectional_images = self.model_type in BIDIRECTIONAL_IMAGE_FAMILIES
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        layer_types = getattr(text, "layer_types", None) or []
        window = getattr(text, "sliding_window", None)
        self.sliding_window = window if window and "sliding_attention" in layer_types else None

    @property
    def mrope(self) -> bool:
        """Whether positions are the model's multimodal 3-D ones (Qwen2/2.5/3-VL)."""
        return self._rope_owner is not None

    def token_types(self, ids: torch.Tensor) -> torch.Tensor:
        """0 for text, 1 for image, 2 for video tokens: ids (..., T) -> (..., T), what the processors emit."""
        types = torch.zeros_like(ids)
        if self.image_token_id is not None:
            types[ids == self.image_token_id] = 1
        if self.video_token_id is not None:
            types[ids == self.video_token_id] = 2
        return types

    def aligned_inputs(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """The text-aligned inputs this model reads, for rows of ids (B, T)."""
        return {key: self.token_types(ids) for key in self.aligned_keys}

    def prefix_positions(self, prefix: list[int], vision: Vision) -> tuple[torch.Tensor, int]:
        """(positions (3, P), offset) of one image+prompt prefix from the model's own rope index; text that follows
        the prefix at sequence index j >= P sits at position j + offset on every axis."""
        ids = torch.tensor([prefix])  # (1, P)
        positions = self.prompt_positions(ids, torch.ones_like(ids), {k: v.cpu() for k, v in vision.items()})[:, 0]
        return positions.cpu(), int(positions.max()) + 1 - len(prefix)

    def positions(self, rows: list[list[int]], local: torch.Tensor, prefix_lengths: list[int],
                  visions: list[Vision]) -> torch.Tensor:
        """Position ids of packed rows: (B, T) token counts, or (3, B, T) M-RoPE positions.

        `local` (B, T) holds each token's index in its own sequence (prefix, then each continuation restarting after
        it); rows[b][:prefix_lengths[b]] is row b's prefix, showing visions[b].
        """
        if not self.mrope:
            return local
        out = local[None].repeat(3, 1, 1)  # (3, B, T)
        for b, (row, n) in enumerate(zip(rows, prefix_lengths)):
            prefix, offset = self.prefix_positions(row[:n], visions[b])
            out[:, b, :n] = prefix
            out[:, b, n : len(row)] += offset
        return out

    def attention(self, segments: torch.Tensor, valid: torch.Tensor, local: torch.Tensor, ids: torch.Tensor,
                  dtype: torch.dtype) -> torch.Tensor | dict[str, torch.Tensor]:
        """Additive masks for packed rows: segments, valid, local, ids all (B, T) -> (B, 1, T, T), or one per layer
        type where some layers slide.

        Query i sees key j as engines.packing.allowed_blocks says -- or when i and j are tokens of one image in a
        family whose images attend both ways -- and, in a sliding layer, only while local[i] - local[j] < window.
        """
        allowed = allowed_blocks(segments, valid)  # (B, T, T)
        if self.bidirectional_images and self.image_token_id is not None:
            image = (ids == self.image_token_id) & valid  # (B, T)
            start = image & ~torch.nn.functional.pad(image, (1, 0))[:, :-1]  # first token of each image's run
            block = torch.where(image, start.long().cumsum(-1), 0)  # (B, T): run number, 0 off images
            allowed |= (block[:, :, None] == block[:, None, :]) & (block[:, :, None] > 0)
        full = additive_mask(allowed, dtype)
        if self.sliding_window is None:
            return full
        near = (local[:, :, None] - local[:, None, :]) < self.sliding_window  # (B, T, T)
        return {"full_attention": full, "sliding_attention": additive_mask(allowed & near, dtype)}

    def prompt_positions(self, ids: torch.Tensor, mask: torch.Tensor, vision: Vision) -> torch.Tensor:
        """Positions of a left-padded batch of whole prompts, as the model's own forward (and `generate`) would
        derive them: ids, mask (B, T) -> (B, T), or (3, B, T) for M-RoPE."""
        if not self.mrope:
            return (mask.cumsum(-1) - 1).clamp(min=0)
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if "mm_token_type_ids" in self.rope_args:
            kwargs["mm_token_type_ids"] = self.token_types(ids)
        kwargs |= {k: v for k, v in vision.items() if k in self.rope_args and k != "input_ids"}
        positions, _ = self._rope_owner.get_rope_index(**kwargs)  # (3, B, T)
        return positions


def packed_inputs(model: torch.nn.Module, packs: list[Pack], visions: list[Vision], pad_id: int,
                  dtype: torch.dtype, device: torch.device | str, images: dict[str, Any] | None = None) -> dict:
    """Model kwargs for a batch of packed rows, row b showing visions[b]: ids, positions, the family's masks and
    text-aligned inputs, and the image inputs (`images` where the caller built them, e.g. an ImageBank's encoder
    outputs; else the visions concatenated). Pass the dtype attention runs in (logps.packed.mask_dtype)."""
    family = family_of(model)
    ids, local, seg = pad_packs(packs, pad_id)  # (B, T) each, on the CPU
    positions = family.positions([p.input_ids for p in packs], local, [p.starts[0] for p in packs], visions)
    ids, local, seg = (to_device(t, device) for t in (ids, local, seg))
    return {
        "input_ids": ids,
        "position_ids": to_device(positions, device),  # (B, T) or (3, B, T)
        "attention_mask": family.attention(seg, seg >= 0, local, ids, dtype),
        **family.aligned_inputs(ids),
        **(images if images is not None else concat_vision(visions, device)),
    }


def plain_inputs(model: torch.nn.Module, seqs: list[list[int]], visions: list[Vision], pad_id: int,
                 device: torch.device | str) -> dict:
    """Model kwargs for whole sequences, right-padded, one image each (visions[b]): the plain forward, in which the
    model derives its positions and masks itself -- what every fast path is compared with."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)  # (B, T)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    family = family_of(model)
    ids, mask = to_device(ids, device), to_device(mask, device)
    return {"input_ids": ids, "attention_mask": mask, **family.aligned_inputs(ids), **concat_vision(visions, device)}


_FAMILIES: weakref.WeakKeyDictionary[torch.nn.Module, Family] = weakref.WeakKeyDictionary()


def family_of(model: torch.nn.Module) -> Family:
    """The Family of a model (cached per model object; wrappers such as DDP or peft are looked through)."""
    inner = model
    while hasattr(inner, "module") and isinstance(inner.module, torch.nn.Module):  # DDP / FSDP wrappers
        inner = inner.module
    if hasattr(inner, "get_base_model"):  # peft
        inner = inner.get_base_model()
    if inner not in _FAMILIES:
        _FAMILIES[inner] = Family(inner)
    return _FAMILIES[inner]
