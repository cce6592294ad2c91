"""Packed sequences: layout, the block mask, and how suffixes are split into packs."""

from __future__ import annotations

import torch

from rlaifv.engines.packing import block_mask, collate_packs, common_prefix_length, pack, pack_bounds


def test_pack_layout_restarts_positions_after_the_prefix():
    p = pack([1, 2, 3], [[4, 5], [6]])
    assert p.input_ids == [1, 2, 3, 4, 5, 6]
    assert p.position_ids == [0, 1, 2, 3, 4, 3]
    assert p.segments == [0, 0, 0, 1, 1, 2]
    assert p.starts == [3, 5] and p.ends == [4, 5]


def test_block_mask_lets_a_suffix_see_the_prefix_and_itself_only():
    p = pack([1, 2], [[3, 4], [5]])
    batch = collate_packs([p, pack([1], [[2]])], pad_id=0, dtype=torch.float32, device="cpu")
    allowed = batch["attention_mask"][0, 0] == 0  # (T, T)
    want = torch.tensor([
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 0, 0, 1],  # the second suffix skips the first one
    ], dtype=torch.bool)
    assert torch.equal(allowed, want)
    padded = batch["attention_mask"][1, 0] == 0
    assert padded[4].tolist() == [False, False, False, False, True]  # padding sees itself only
    assert padded[:, 2:].sum() == 3  # nothing real attends to padding
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 2]


def test_block_mask_rejects_nothing_on_one_plain_sequence():
    seg = torch.zeros(1, 4, dtype=torch.long)
    mask = block_mask(seg, torch.ones(1, 4, dtype=torch.bool), torch.float32)
    assert torch.equal(mask[0, 0] == 0, torch.ones(4, 4, dtype=torch.bool).tril())


def test_common_prefix_leaves_every_row_a_suffix():
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2


def test_pack_bounds_cap_count_and_tokens():
    assert pack_bounds([10] * 5, 100, 2) == [(0, 2), (2, 4), (4, 5)]  # at most 2 per pack
    assert pack_bounds([50, 50, 50], 10, 64) == [(0, 2), (2, 3)]  # 128-token budget behind a short prefix
    assert pack_bounds([50, 50, 50], 100, 64) == [(0, 3)]  # 400-token budget behind a long one
    assert pack_bounds([500], 10, 64) == [(0, 1)]  # an over-long suffix still gets its own pack
