"""Which pairs each optimizer step sees, for every process and accumulation step."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rlaifv.config import DPOConfig


@dataclass(frozen=True)
class Schedule:
    """The pairs of every optimizer step, for every process and accumulation step.

    Epoch e visits the pairs in a permutation seeded by (seed, e); step i of the epoch takes the next global batch
    of it, and the last step of an epoch is filled up from the epoch's start (every micro-batch has the same size, so
    a mean over micro-batches is the mean over the global batch). A step's pairs depend on the global batch size
    only, never on how it is split, which is what makes different process counts and accumulation comparable.
    """

    n_pairs: int
    per_device: int
    accumulation: int
    processes: int
    seed: int

    @property
    def global_batch(self) -> int:
        return self.per_device * self.accumulation * self.processes

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_pairs / self.global_batch)

    def total_steps(self, cfg: DPOConfig) -> int:
        """The steps the learning-rate schedule spans."""
        return cfg.schedule_steps(self.steps_per_epoch)

    def run_steps(self, cfg: DPOConfig) -> int:
        """The steps that run (`DPOConfig.stop_fraction`)."""
        return cfg.run_steps(self.steps_per_epoch)

    def global_indices(self, step: int) -> list[int]:
        epoch, i = divmod(step, self.steps_per_epoch)
        order = torch.randperm(self.n_pairs, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        wrapped = order * math.ceil(self.global_batch / self.n_pairs + 1)
        lo = i * self.global_batch
        return wrapped[lo : lo + self.global_batch]

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """This process's micro-batches of one step, in accumulation order."""
        indices = self.global_indices(step)
        return [indices[(j * self.processes + rank) * self.per_device :][: self.per_device]
                for j in range(self.accumulation)]
