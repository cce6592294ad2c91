"""LoRA layers that keep no copies of their inputs for the backward pass.

peft's LoRA linear computes `base(x) + B(A(dropout(x.to(A.dtype)))) * scale`. With a bf16 base model, fp32 adapters
and bf16 autocast, that makes three copies of every adapted layer's input: the fp32 cast, the dropout output, and
autocast's bf16 cast of it for A's matmul, and the last one (plus the dropout mask) is saved for the backward pass,
once per adapted layer: q, k, v and gate, up each keep their own copy of the same input. At a 2-layer, 1024-wide
LLaVA-7B-like shape that is ~320 of the 944 MB saved for the backward pass (CPU, where the masks are fp32; CUDA keeps
bool ones); at LLaVA-7B's shape on an H100 the step's peak went from 43.1 to 35.2 GB (benchmarks/RESULTS.md).

`lean_lora(model)` swaps each adapter's A for `LeanLoraA`, which reads the layer's input as is (the base layer has
already saved it) and, when dropout is on, applies the dropout inside one autograd function that saves only a seed
and draws the same mask again in the backward pass. Without dropout the numbers are bit for bit peft's (the input
round trip bf16 -> fp32 -> bf16 is exact); with dropout the masks come from another random stream, so runs differ
from peft's by which units are dropped, not by how. Parameters, state dicts and merging are untouched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _keep_mask(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """1 where a unit is kept, 0 where dropped, in x's dtype and shape; the same seed gives the same mask."""
    gen = torch.Generator(device=x.device)
    gen.manual_seed(seed)
    return torch.empty_like(x).bernoulli_(1 - p, generator=gen)


class _DropoutLinear(torch.autograd.Function):
    """y = (x * mask / (1 - p)) @ W.T, saving x (shared with the base layer) and the seed instead of the dropped
    copy and the mask; every tensor is already in the compute dtype."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, p: float, seed: int) -> torch.Tensor:
        dropped = x * _keep_mask(x, p, seed)
        dropped.mul_(1 / (1 - p))  # scalar in the op's fp32 math: one rounding, as nn.Dropout
        ctx.save_for_backward(x, weight)
        ctx.p, ctx.seed = p, seed
        return F.linear(dropped, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        keep = _keep_mask(x, ctx.p, ctx.seed)  # (..., in)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad @ weight).mul_(keep).mul_(1 / (1 - ctx.p))  # (..., in)
        if ctx.needs_input_grad[1]:
            dropped = x * keep
            dropped.mul_(1 / (1 - ctx.p))
            grad_w = grad.reshape(-1, grad.shape[-1]).T @ dropped.reshape(-1, dropped.shape[-1])  # (r, in)
        return grad_x, grad_w, None, None


class LeanLoraA(torch.nn.Linear):
    """A LoRA A matrix (no bias) with its dropout built in; set by `lean_lora` on an existing nn.Linear."""

    dropout_p: float = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        autocast = torch.is_autocast_enabled(device)
        if not autocast:
            x = x.to(self.weight.dtype)
        if not (self.training and self.dropout_p > 0):
            return F.linear(x, self.weight)  # autocast casts the weight (cached), x is used as is
        dtype = torch.get_autocast_dtype(device) if autocast else self.weight.dtype
        seed = int(torch.randint(0, 2**62, ()).item())  # CPU generator: checkpointing restores it on recompute
        with torch.autocast(device, enabled=False):
            return _DropoutLinear.apply(x.to(dtype), self.weight.to(dtype), self.dropout_p, seed)


def lean_lora(model: torch.nn.Module) -> int:
    """Swap every plain LoRA linear layer of a peft model to `LeanLoraA`; returns how many adapters were swapped.

    Layers peft implements differently (DoRA and other variants, embeddings, convolutions, A with a bias) keep
    peft's code.
    """
    from peft.tuners.lora import Linear as LoraLinear

    swapped = 0
    for module in model.modules():
        if not isinstance(module, LoraLinear) or module.lora_variant:
            continue
        names = list(module.lora_A.keys())
        if not all(type(module.lora_A[n]) in (torch.nn.Linear, LeanLoraA) and module.lora_A[n].bias is None
                   for n in names):
            continue
        for name in names:
            dropout = module.lora_dropout[name]
            a = module.lora_A[name]
            if type(a) is torch.nn.Linear:
                a.__class__ = LeanLoraA
                a.dropout_p = dropout.p if isinstance(dropout, torch.nn.Dropout) else 0.0
                module.lora_dropout[name] = torch.nn.Identity()
                swapped += 1
        module.cast_input_dtype_enabled = False  # LeanLoraA casts where autocast does not
    return swapped
