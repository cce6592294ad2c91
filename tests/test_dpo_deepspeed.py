"""`rlaifv train` under the shipped DeepSpeed ZeRO-2 and ZeRO-3 configs on two CPU processes (DeepSpeed's CPU
accelerator over gloo): the loss curve and the saved model equal the one-process run's. Skipped where DeepSpeed is
not installed (it is not a test dependency: `pip install deepspeed` to run these)."""

from __future__ import annotations

from pathlib import Path

import pytest
from distributed_runs import RUN, assert_same_curve, assert_same_model, launch, launched, pairs_at

from rlaifv.config import DPOConfig
from rlaifv.logps.reference import compute_reference_logps

pytest.importorskip("deepspeed")

# Tolerances: ZeRO reduces gradients in its own buckets and divides them by the number of processes before summing
# (ZeRO-3 also gathers each layer's weights for its forward), so the sums round differently from one process's
# batch mean. Measured over four steps: loss 4e-6, rewards 8e-5 (beta x a sum of ~100 token log-probs), grad_norm
# 1.3e-5, weights 2.4e-6. A lost or doubled gradient shard moves the loss by 1e-3 or more.
METRIC_TOL, WEIGHT_TOL = 3e-4, 1e-5


@pytest.mark.parametrize("config", ["deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_deepspeed_on_two_cpu_processes_trains_like_one_process(micro_world, tmp_path, dpo_one_process, config):
    root = pairs_at(tmp_path)
    if config == "deepspeed_zero3.yaml":
        # ZeRO-3 creates the model sharded, so the launch refuses to run the reference pass itself ...
        refused = launch(config, root, micro_world.policy, tmp_path / "two")
        assert refused.returncode != 0 and "--reference-only" in refused.stderr
        # ... which runs first, on one process (what `rlaifv train --reference-only` does)
        compute_reference_logps(root / "fb", micro_world.policy, DPOConfig(**RUN), device="cpu")
    summary = launched(config, root, micro_world.policy, tmp_path / "two")
    assert summary["strategy"] == "DEEPSPEED"
    assert_same_curve(tmp_path / "two" / "metrics.csv", Path(dpo_one_process["metrics"]), METRIC_TOL)
    assert_same_model(Path(summary["model"]), Path(dpo_one_process["model"]), WEIGHT_TOL)
