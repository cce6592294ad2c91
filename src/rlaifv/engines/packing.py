"""Packed sequences: one shared prefix followed by several suffixes that cannot see each other.

Scoring many continuations of one image+prompt (yes/no questions about an image, chosen and rejected answers of a
DPO pair, best-of-N candidates) would otherwise encode the image and the prompt once per continuation. A pack puts
the prefix once and every suffix after it in a single row; a block attention mask lets each suffix attend to the
prefix and to itself only, and each suffix's positions restart right after the prefix, so every suffix token sees
exactly what it would see in its own sequence. Unlike reusing a KV cache, this also works under gradient
checkpointing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlaifv.engines.transfer import to_device


@dataclass(frozen=True)
class Pack:
    """Token layout of one packed row."""

    input_ids: list[int]  # prefix, then suffix 1, suffix 2, ...
    position_ids: list[int]  # 0..P-1 over the prefix, then P.. again for every suffix
    segments: list[int]  # 0 on the prefix, k on suffix k (k >= 1)
    starts: list[int]  # index of each suffix's first token in the row
    ends: list[int]  # index of each suffix's last token in the row

    def __len__(self) -> int:
        return len(self.input_ids)


def pack(prefix: list[int], suffixes: list[list[int]]) -> Pack:
    """Lay out prefix + suffixes; every suffix must be non-empty."""
    if not prefix:
        raise ValueError("a pack needs a non-empty prefix")
    ids, pos, seg = list(prefix), list(range(len(prefix))), [0] * len(prefix)
    starts, ends = [], []
    for k, suffix in enumerate(suffixes, start=1):
        if not suffix:
            raise ValueError(f"suffix {k} is empty")
        starts.append(len(ids))
        ids.extend(suffix)
        pos.extend(range(len(prefix), len(prefix) + len(suffix)))
        seg.extend([k] * len(suffix))
        ends.append(len(ids) - 1)
    return Pack(ids, pos, seg, starts, ends)


MASK_ALIGN = 16  # elements per mask row: CUDA's memory-efficient SDPA pads (and keeps, per layer) a copy otherwise


def allowed_blocks(segments: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Which key each query of a packed row may attend: segments, valid (B, T) -> (B, T, T) bool.

    Query i attends key j iff j <= i, both are real tokens, and j is on the prefix or on i's own suffix.
    """
    t = segments.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=segments.device).tril()[None]  # (1, T, T)
    q_seg, k_seg = segments[:, :, None], segments[:, None, :]  # (B, T, 1), (B, 1, T)
    return causal & ((k_seg == 0) | (k_seg == q_seg)) & valid[:, None, :] & valid[:, :, None]


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where allowed, the dtype's minimum elsewhere: (B, T, T) bool -> (B, 1, T, T).

    Rows allowed nothing (padding) attend to themselves, so no softmax row is empty. An additive float mask works
    with both the eager and the SDPA attention of transformers. Pass the dtype attention runs in (autocast's under
    autocast): a mask in another dtype is cast again in every layer. The mask is a view of a buffer whose rows are a
    multiple of MASK_ALIGN long, so CUDA's memory-efficient SDPA uses it in place.
    """
    b, t, _ = allowed.shape
    allowed = allowed | torch.eye(t, dtype=torch.bool, device=allowed.device)[None]
    width = -(-t // MASK_ALIGN) * MASK_ALIGN
    mask = torch.zeros(b, 1, t, width, dtype=dtype, device=allowed.device)[..., :t]  # (B, 1, T, T), aligned rows
    return mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)


def block_mask(segments: torch.Tensor, valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention mask (B, 1, T, T) for packed rows of a plain causal language model (allowed_blocks)."""
    return additive_mask(allowed_blocks(segments, valid), dtype)


def pad_packs(packs: list[Pack], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, local positions, segments), each (B, T) on the CPU; segment -1 marks padding."""
    width = max(len(p) for p in packs)
    ids = torch.full((len(packs), width), pad_id, dtype=torch.long)  # (B, T)
    pos = torch.zeros((len(packs), width), dtype=torch.long)  # (B, T)
    seg = torch.full((len(packs), width), -1, dtype=torch.long)  # (B, T)
    for i, p in enumerate(packs):
        ids[i, : len(p)] = torch.tensor(p.input_ids)
        pos[i, : len(p)] = torch.tensor(p.position_ids)
        seg[i, : len(p)] = torch.tensor(p.segments)
    return ids, pos, seg


def collate_packs(packs: list[Pack], pad_id: int, dtype: torch.dtype, device: torch.device | str) -> dict:
    """Right-padded batch of packs for a text-only causal LM: input_ids (B, T), position_ids (B, T), attention_mask
    (B, 1, T, T). VLM rows go through engines.family.packed_inputs, which knows each family's positions and masks."""
    ids, pos, seg = (to_device(t, device) for t in pad_packs(packs, pad_id))
    return {"input_ids": ids, "position_ids": pos, "attention_mask": block_mask(seg, seg >= 0, dtype)}


def common_prefix_length(rows: list[list[int]]) -> int:
    """Length of the longest shared prefix, leaving at least one token of every row as its suffix."""
    limit = min(len(r) for r in rows) - 1
    n = 0
    while n < limit and all(r[n] == rows[0][n] for r in rows):
        n += 1
    return n


def pack_bounds(suffix_lengths: list[int], prefix_length: int, max_suffixes: int) -> list[tuple[int, int]]:
    """Split suffixes into consecutive packs: at most `max_suffixes` each, and at most max(4 x prefix, 128) suffix
    tokens each.

    A pack pays for its prefix once but attention grows with the square of its length, so it pays to pack many
    suffixes behind a long prefix (a 576-token image: all 64 questions in one row) and few behind a short one (the
    world's 9-token image: about 8). Measured in benchmarks/feedback_speed.py.
    """
    budget = max(4 * prefix_length, 128)
    bounds, lo, used = [], 0, 0
    for i, n in enumerate(suffix_lengths):
        if i > lo and (i - lo >= max_suffixes or used + n > budget):
            bounds.append((lo, i))
            lo, used = i, 0
        used += n
    bounds.append((lo, len(suffix_lengths)))
    return bounds
