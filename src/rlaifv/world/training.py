"""Pieces shared by the world's small training loops (policy, labeler and splitter in `rlaifv world bootstrap`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def text_batch(rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded (prompt ids, target ids) rows; labels only on target tokens, so the loss teaches the answer."""
    width = max(len(p) + len(t) for p, t in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)  # (B, T)
    attention = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for i, (p, t) in enumerate(rows):
        input_ids[i, : len(p) + len(t)] = torch.tensor([*p, *t])
        labels[i, len(p) : len(p) + len(t)] = torch.tensor(list(t))
        attention[i, : len(p) + len(t)] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def adamw(params, **kwargs) -> torch.optim.AdamW:
    """AdamW with the multi-tensor update: the same floats as torch's default CPU path, bit for bit, with one
    kernel per step instead of one per parameter tensor -- the tiny models have ~60 small tensors."""
    return torch.optim.AdamW(params, foreach=True, **kwargs)


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warmup, then cosine decay to 5 % of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))


def optimizer_step(model: torch.nn.Module, loss: torch.Tensor, opt, sched) -> None:
    """Backward, then `apply_gradients`."""
    loss.backward()
    apply_gradients(model, opt, sched)


def apply_gradients(model: torch.nn.Module, opt, sched) -> None:
    """Clip the accumulated gradient's norm at 1, step the optimizer and the schedule, clear the gradients."""
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)


def freeze_aligned(model) -> None:
    """Stop gradients to what the vision alignment made: the vision tower, the projector and, in a model whose
    output head is untied, the input embeddings (the alignment's targets; a tied head must keep learning)."""
    for p in [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters()]:
        p.requires_grad_(False)
    if not model.config.text_config.tie_word_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
