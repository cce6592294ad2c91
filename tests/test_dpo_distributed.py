"""`rlaifv train` under accelerate: two CPU processes (gloo) follow the loss curve of one process at the same global
batch, through the shipped DDP config and the command line; every shipped accelerate config loads."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_dpo_logps import make_world_pairs

from rlaifv.config import DPOConfig
from rlaifv.train.dpo import read_metrics, train_dpo

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))
RUN = dict(max_steps=4, save_steps=2, logging_steps=1, learning_rate=1e-3, warmup_ratio=0.0, report_to="none")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_follow_the_one_process_loss_curve(micro_world, tmp_path):
    pairs = make_world_pairs(tmp_path, 8)
    (tmp_path / "dpo.yaml").write_text(json.dumps(RUN))  # JSON is YAML
    # `accelerate launch --cpu --num_processes 2` starts a single process in accelerate 1.x (its simple launcher
    # spawns CPU workers only through mpirun); the DDP config's torchrun launcher with --device cpu gives two gloo
    # processes, the same code path as two GPUs.
    ddp = ROOT / "configs" / "accelerate" / "ddp.yaml"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ddp), "--num_processes", "2",
           "--main_process_port", str(_free_port()), "-m", "rlaifv.cli", "train",
           "--pairs", str(pairs), "--policy", str(micro_world.policy), "--out", str(tmp_path / "two"),
           "--config", str(tmp_path / "dpo.yaml"), "--batch-size", "1", "--grad-accum", "2", "--device", "cpu",
           "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    summary = json.loads(two.stdout)  # one JSON object: only the main process prints
    assert (summary["processes"], summary["global_batch"], summary["steps"]) == (2, 4, 4)

    # One process, the same global batch of 4 split differently (4 pairs per forward, no accumulation).
    one = train_dpo(pairs, micro_world.policy, tmp_path / "one", DPOConfig(**RUN, per_device_train_batch_size=4))
    got, want = read_metrics(tmp_path / "two" / "metrics.csv"), read_metrics(one["metrics"])
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    # Tolerance: the two runs sum the same per-pair gradients in a different order (a gloo all-reduce of two
    # half-batch means vs one batch mean), which differs in the last fp32 bits (~1e-7 relative); four Adam steps
    # carry that to ~1e-6 in the loss. A real fault -- a pair seen twice or missed, gradients summed instead of
    # averaged, the schedule stepped per process -- moves the loss by 1e-3 or more at lr 1e-3.
    for g, w in zip(got, want):
        for name in ("loss", "rewards/chosen", "rewards/rejected", "grad_norm", "learning_rate"):
            assert g[name] == pytest.approx(w[name], abs=1e-5), (g["step"], name)
    assert got[-1]["loss"] != pytest.approx(got[0]["loss"], abs=1e-3)  # the curve moved: the comparison has teeth


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
