"""Tensors between the host and a GPU without draining the GPU's queue.

CUDA runs work in the order it was queued, while the host goes on queueing. Two plain transfers stop that: a copy
from ordinary (pageable) host memory, and reading a result (`.item()`, `.tolist()`, `float()`), each wait for
everything queued so far, so the GPU then idles while the host prepares the next batch. These two do not wait
for work queued before them (to_device) or after them (to_host_later). On a CPU both are plain copies.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`tensor` on `device`; from the CPU to a GPU through pinned memory, as one more queued operation."""
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def to_host_later(tensors: list[torch.Tensor]) -> Callable[[], list[torch.Tensor]]:
    """Start copying `tensors` to the host; the returned function waits for these copies alone and returns them.

    Call it after queueing the next batch: it waits for the work these tensors came from, not for the next batch.
    """
    if not tensors or tensors[0].device.type != "cuda":
        hosts = [t.detach().to("cpu", copy=True) for t in tensors]  # a snapshot, as the GPU path's copy is
        return lambda: hosts
    hosts = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t.detach(), non_blocking=True)
             for t in tensors]
    copied = torch.cuda.Event()
    copied.record()

    def wait() -> list[torch.Tensor]:
        copied.synchronize()
        return hosts
    return wait
