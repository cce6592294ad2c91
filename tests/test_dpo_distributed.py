"""`rlaifv train` under accelerate: two CPU processes (gloo) follow the loss curve of one process at the same global
batch, through the shipped DDP config and the command line; every shipped accelerate config loads."""

from __future__ import annotations

from pathlib import Path

import pytest
from distributed_runs import ROOT, assert_same_curve, launched, pairs_at

CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))


def test_two_cpu_processes_follow_the_one_process_loss_curve(micro_world, tmp_path, dpo_one_process):
    summary = launched("ddp.yaml", pairs_at(tmp_path), micro_world.policy, tmp_path / "two")
    assert summary["strategy"] == "MULTI_CPU"  # DDP over gloo
    # Tolerance: the two runs sum the same per-pair gradients in a different order (a gloo all-reduce of two
    # half-batch means vs one batch mean), which differs in the last fp32 bits (~1e-7 relative); four Adam steps
    # carry that to ~1e-6 in the loss. A real fault -- a pair seen twice or missed, gradients summed instead of
    # averaged, the schedule stepped per process -- moves the loss by 1e-3 or more at lr 1e-3.
    assert_same_curve(tmp_path / "two" / "metrics.csv", Path(dpo_one_process["metrics"]), 1e-5)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_accelerate_configs_load_and_open_with_their_launch_command(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.num_processes >= 1 and config.mixed_precision == "no"  # precision comes from --bf16
    launch = [line for line in path.read_text().splitlines() if line.startswith("# accelerate launch")]
    assert launch and f"--config_file configs/accelerate/{path.name} -m rlaifv.cli train" in launch[0]
    assert (ROOT / launch[0].split("--config_file ")[1].split()[0]).resolve() == path.resolve()


def test_the_four_configs_are_shipped():
    assert [p.name for p in CONFIGS] == ["ddp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml", "fsdp.yaml"]
