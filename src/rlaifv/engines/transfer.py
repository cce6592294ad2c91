"""Tensors between the host and a GPU without draining the GPU's queue.

CUDA runs work in the order it was queued, while the host goes on queueing. Two plain transfers stop that: a copy
from ordinary (pageable) host memory, and reading a result (`.item()`, `.tolist()`, `float()`), each wait for
everything queued so far, so the GPU then idles while the host prepares the next batch. These two do not wait
for work queued before them (to_device) or after them (to_host_later); `OneBehind` reads each step's results once
the next step is queued. On a CPU, to_device is a plain `.to()` and to_host_later a plain copy.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from typing import Any

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
    device = tensors[0].device
    if any(t.device != device for t in tensors):
        raise ValueError(f"tensors on several devices: {sorted({str(t.device) for t in tensors})}")
    hosts = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t.detach(), non_blocking=True)
             for t in tensors]
    copied = torch.cuda.Event()
    copied.record(torch.cuda.current_stream(device))  # the copies' stream, also when another GPU is current

    def wait() -> list[torch.Tensor]:
        copied.synchronize()
        return hosts
    return wait


class OneBehind:
    """Finishes each step one step late: `push(step)` finishes the step pushed before it, `flush()` the last one.

    Push a step once the next one is queued, and its results are read (`finish(*step)`) while the device runs that
    next one. As a context manager it flushes on the way out, also when an exception leaves the block, so the last
    completed step is still logged or stored before the error propagates -- unless finishing it fails too (after a
    CUDA error, say), which then is left out in favour of the original error. A step whose own finishing raised is
    not retried, and the step pushed with it is dropped.
    """

    def __init__(self, finish: Callable[..., Any]) -> None:
        self.finish, self.pending = finish, None

    def push(self, step: tuple) -> None:
        previous, self.pending = self.pending, None
        if previous is not None:
            self.finish(*previous)
        self.pending = step

    def flush(self) -> None:
        step, self.pending = self.pending, None
        if step is not None:
            self.finish(*step)

    def __enter__(self) -> OneBehind:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.flush()
        else:
            with suppress(Exception):  # the error that left the block is the one to report
                self.flush()
