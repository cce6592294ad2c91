"""Faults forced into real models, for the stage-fault tests: a forward hook that writes NaN (or inf) into the
logits a model computes for one chosen input, one that makes a token's embedding NaN, and one that makes a text
model answer with a fixed word.

The hooks are PyTorch's global module hooks, so they reach a model wherever a stage loads it (a stage's own
`HFEngine`, the reference pass's model, a best-of-N scorer) without replacing any of it: the model runs its real
forward and only its output is overwritten, as a numerically broken checkpoint or kernel would.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch.nn.modules.module import register_module_forward_hook


def find(row: Sequence[int], marker: Sequence[int]) -> int | None:
    """The first index where `marker` occurs in `row`, or None."""
    m = len(marker)
    for i in range(len(row) - m + 1):
        if list(row[i : i + m]) == list(marker):
            return i
    return None


def kept_positions(kwargs: dict, length: int) -> list[int]:
    """The sequence positions whose logits a forward returned (`logits_to_keep`: 0 = all, k = the last k, or a
    tensor of positions), in the order of the logits' second axis."""
    keep = kwargs.get("logits_to_keep", 0)
    if isinstance(keep, torch.Tensor):
        return keep.tolist()
    return list(range(length - keep, length)) if keep else list(range(length))


def poisoned_positions(row: Sequence[int], marker: Sequence[int], until: Sequence[int] | None) -> list[int]:
    """Where a row's logits read the marked text, one position per occurrence of `marker` (a packed row holds
    several answers or questions): the position that predicts the marker's first token, or with `until`, the last
    token of `until`'s first occurrence after the marker (the end of the question holding it, where a labeler
    reads its answer)."""
    out, at = [], 0
    while (start := find(row[at:], marker)) is not None:
        start += at
        at = start + 1
        if until is None:
            out.append(start - 1)
        elif (end := find(row[start:], until)) is not None:
            out.append(start + end + len(until) - 1)
    return out


@contextmanager
def poisoned_logits(marker: Sequence[int], value: float = float("nan"),
                    until: Sequence[int] | None = None) -> Iterator[list[int]]:
    """While open, every model forward that returns logits writes `value` into the logits at the position that
    reads the marked text (`poisoned_positions`) in each row whose input ids hold `marker`, if the forward kept that
    position; every other logit is the model's own. Yields a list that gets one entry per poisoned row, so a test
    can check that the fault fired.
    """
    hits: list[int] = []

    def hook(module, args, kwargs, output):
        logits = getattr(output, "logits", None)
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not isinstance(logits, torch.Tensor) or not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            return None
        kept = kept_positions(kwargs, ids.shape[1])
        if len(kept) != logits.shape[1]:
            return None
        column = {pos: k for k, pos in enumerate(kept)}
        for b, row in enumerate(ids.tolist()):
            for pos in poisoned_positions(row, marker, until):
                if pos in column:
                    logits[b, column[pos]] = value
                    hits.append(b)
        return None

    handle = register_module_forward_hook(hook, with_kwargs=True)
    try:
        yield hits
    finally:
        handle.remove()


@contextmanager
def forced_answer(marker: Sequence[int], answer: Sequence[int], eos: int) -> Iterator[list[int]]:
    """While open, a generating model answers the ids `answer` then `eos` to every prompt whose ids hold `marker`:
    its next-token logits are overwritten step by step. Rows are recognised at the prefill (the whole prompt) and
    followed through the decoding steps that feed one token per row. Yields the list of rows forced per prefill."""
    rows: list[int] = []
    forced: list[int] = []
    step = [0]

    def hook(module, args, kwargs, output):
        logits = getattr(output, "logits", None)
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not isinstance(logits, torch.Tensor) or not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            return None
        if ids.shape[1] > 1:  # a prefill: find the marked prompts again
            rows[:] = [b for b, row in enumerate(ids.tolist()) if find(row, marker) is not None]
            forced.extend(rows)
            step[0] = 0
        token = answer[step[0]] if step[0] < len(answer) else eos
        step[0] += 1
        for b in rows:
            logits[b, -1] = float("-inf")
            logits[b, -1, token] = 0.0
        return None

    handle = register_module_forward_hook(hook, with_kwargs=True)
    try:
        yield forced
    finally:
        handle.remove()


@contextmanager
def nan_embedding(token: int, vocab_size: int) -> Iterator[list[int]]:
    """While open, a token embedding layer (an `nn.Embedding` of `vocab_size` rows) returns NaN for `token`, as a
    checkpoint whose embedding row overflowed would -- without touching a tied output layer, so only the inputs
    that hold the token (and their KV cache, and every logit after it) go non-finite. Yields a list that gets one
    entry per forward the fault fired in."""
    hits: list[int] = []

    def hook(module, args, output):
        if isinstance(module, torch.nn.Embedding) and module.num_embeddings == vocab_size and args:
            found = args[0] == token
            if bool(found.any()):
                output[found] = float("nan")
                hits.append(int(found.sum()))
        return None

    handle = register_module_forward_hook(hook)
    try:
        yield hits
    finally:
        handle.remove()
