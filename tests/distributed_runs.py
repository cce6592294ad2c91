"""What the multi-process training tests share: a 4-step run of `rlaifv train` launched on two CPU processes (gloo)
through a shipped accelerate config, the same run on one process, and comparisons of their curves and models."""

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
RUN = dict(max_steps=4, save_steps=2, logging_steps=1, learning_rate=1e-3, warmup_ratio=0.0, report_to="none")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pairs_at(root: Path) -> Path:
    """8 world pairs in root/fb and the run's config in root/dpo.yaml; returns root."""
    make_world_pairs(root, 8)
    (root / "dpo.yaml").write_text(json.dumps(RUN))  # JSON is YAML
    return root


def one_process_run(root: Path, policy: Path) -> dict:
    """The reference run: one process, the global batch of 4 in one forward (no accumulation), on its own copy of
    the pairs, so each launched run does its own reference pass; returns its summary."""
    pairs_at(root)
    return train_dpo(root / "fb", policy, root / "out", DPOConfig(**RUN, per_device_train_batch_size=4))


def launch(config: str, root: Path, policy: Path, out: Path) -> subprocess.CompletedProcess:
    """`rlaifv train` on 2 CPU processes (gloo) through a shipped accelerate config: batch 1 x accumulation 2 per
    process, global batch 4."""
    # `accelerate launch --cpu --num_processes 2` starts a single process in accelerate 1.x (its simple launcher
    # spawns CPU workers only through mpirun); the shipped configs' torchrun launcher with --device cpu gives two
    # gloo processes, the same code path as two GPUs. --num_processes 2 overrides the configs' 8 at launch time.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs" / "accelerate" /
           config), "--num_processes", "2", "--main_process_port", str(free_port()), "-m", "rlaifv.cli", "train",
           "--pairs", str(root / "fb"), "--policy", str(policy), "--out", str(out),
           "--config", str(root / "dpo.yaml"), "--batch-size", "1", "--grad-accum", "2", "--device", "cpu", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if config.startswith("deepspeed"):
        env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed's own switch; unset, it warns on stdout that it found no GPU
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def launched(config: str, root: Path, policy: Path, out: Path) -> dict:
    """`launch`, which must succeed; returns the main process's JSON summary."""
    done = launch(config, root, policy, out)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # one JSON object: only the main process prints
    assert (summary["processes"], summary["global_batch"], summary["steps"]) == (2, 4, 4)
    return summary


def assert_same_curve(got_path: Path, want_path: Path, tol: float) -> None:
    """Two metrics.csv files log the same 4-step curve within `tol`, and the curve moved."""
    got, want = read_metrics(got_path), read_metrics(want_path)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    for g, w in zip(got, want):
        for name in ("loss", "rewards/chosen", "rewards/rejected", "grad_norm", "learning_rate"):
            assert g[name] == pytest.approx(w[name], abs=tol), (g["step"], name)
    assert got[-1]["loss"] != pytest.approx(got[0]["loss"], abs=1e-3)  # the curve moved: the comparison has teeth


def assert_same_model(got: Path, want: Path, tol: float) -> None:
    """The model saved in `got` loads, and every weight is within `tol` of the model saved in `want`."""
    import torch
    from transformers import AutoModelForImageTextToText

    loaded = AutoModelForImageTextToText.from_pretrained(got, dtype=torch.float32).state_dict()
    reference = AutoModelForImageTextToText.from_pretrained(want, dtype=torch.float32).state_dict()
    assert loaded.keys() == reference.keys()
    diffs = {k: (loaded[k] - reference[k]).abs().max().item() for k in reference}
    assert max(diffs.values()) <= tol, sorted(diffs.items(), key=lambda kv: -kv[1])[:3]
