"""`rlaifv train` under the shipped FSDP2 config on two CPU processes (gloo): the weights really are sharded, the
loss curve and the saved model equal the one-process run's, the frozen vision tower is untouched, and a run
stopped after a checkpoint resumes to the same end."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from distributed_runs import assert_same_curve, assert_same_model, launched, pairs_at
from safetensors.torch import load_file

from rlaifv.train.dpo import read_metrics

# Tolerances. Metrics: as for DDP (test_dpo_distributed), the same per-pair gradients summed in another order (a
# gloo reduce-scatter of two half-batch means instead of one batch mean) differ in the last fp32 bits, and four
# Adam steps carry that to ~1e-6 (measured: 1.7e-6 at most, on grad_norm); a dropped, doubled or unscaled shard
# moves the loss by 1e-3 or more. Weights: each trained weight moves by up to 4 x lr = 4e-3 in four Adam steps;
# Adam divides by sqrt(v), which can carry a last-bit gradient difference of a weight with a tiny gradient into its
# update, so the bound is 1e-5 (measured: 1.4e-6), 0.25% of the movement and far below what a lost or doubled
# gradient shard changes (~1e-3).
METRIC_TOL, WEIGHT_TOL = 1e-5, 1e-5


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_fsdp_on_two_cpu_processes_trains_like_one_process(micro_world, tmp_path, dpo_one_process):
    root = pairs_at(tmp_path)
    summary = launched("fsdp.yaml", root, micro_world.policy, tmp_path / "two")
    assert summary["strategy"] == "FSDP"  # not DDP: accelerate on CPUs ignores the launcher's FSDP request by itself
    state = tmp_path / "two" / "checkpoints" / "checkpoint-2" / "state"
    assert (state / "pytorch_model_fsdp.bin").is_file()  # written by accelerate's FSDP checkpointing
    assert_same_curve(tmp_path / "two" / "metrics.csv", Path(dpo_one_process["metrics"]), METRIC_TOL)

    # The saved model: the full state dict gathered from both shards, the same tensors as the one-process model's
    # file (the tied output head stored once), equal to it; the frozen vision tower equal to the initial policy.
    got, want, start = (_weights(Path(p)) for p in (summary["model"], dpo_one_process["model"], micro_world.policy))
    assert got.keys() == want.keys()
    assert max((got[k] - want[k]).abs().max().item() for k in got) <= WEIGHT_TOL
    tower = [k for k in got if "vision_tower" in k]
    assert tower and all(torch.equal(got[k], start[k]) for k in tower)
    assert any(not torch.equal(got[k], start[k]) for k in got if k not in tower)  # the rest trained
    assert_same_model(Path(summary["model"]), Path(dpo_one_process["model"]), WEIGHT_TOL)

    # Stopped after the step-2 checkpoint: the rerun loads the sharded model and optimizer state and ends where
    # the uninterrupted run ended (same processes, same order of sums: equal to the last bit on a CPU).
    first_metrics = read_metrics(tmp_path / "two" / "metrics.csv")
    for later in ("checkpoints/checkpoint-4", "model", "summary.json"):
        path = tmp_path / "two" / later
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    resumed = launched("fsdp.yaml", root, micro_world.policy, tmp_path / "two")
    assert resumed["resumed_from_step"] == 2
    assert read_metrics(tmp_path / "two" / "metrics.csv") == first_metrics
    again = _weights(Path(resumed["model"]))
    assert all(torch.equal(again[k], got[k]) for k in got)
