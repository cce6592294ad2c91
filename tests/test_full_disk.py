"""A full disk during a real `rlaifv sample` run: the command ends with one clear line (what did not fit, free
space and rerun), no traceback, nothing half-written on the disk, and a rerun with space finishes with the records
of a run that never ran out.

The output sits on a tmpfs small enough that the sampling stage runs out of space part-way. The tmpfs is mounted
in a private mount namespace (`unshare -rm`), or directly where the tests run as root; where neither works (an
unprivileged container) the test is skipped, saying why.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from rlaifv.files import TMP_GLOB
from rlaifv.pipelines.collect import stores

PAGE = 4096  # tmpfs charges whole pages per file
N_PROMPTS = 6


def _mount_script(mnt: Path, kib: int, keep: Path, command: list[str]) -> str:
    """sh: mount a tmpfs of `kib` KiB on `mnt`, run `command` with its output there, copy what it left (hidden
    files too) to `keep`, unmount, and exit with the command's status."""
    quoted = " ".join(f"'{c}'" for c in command)
    return (f"mount -t tmpfs -o size={kib}k tmpfs '{mnt}' || exit 97\n"
            f"{quoted}\nrc=$?\ncp -a '{mnt}/.' '{keep}/'\numount '{mnt}'\nexit $rc\n")


def _launcher(probe_dir: Path) -> list[str]:
    """How to run a mount script here: in a private mount namespace, or directly as root; skips with both
    reasons when neither can mount a tmpfs."""
    errors = []
    script = _mount_script(probe_dir, 64, probe_dir.parent, ["true"])
    for launcher in (["unshare", "-rm", "sh", "-c"], ["sh", "-c"] if os.geteuid() == 0 else None):
        if launcher is None:
            errors.append("not root, so no plain mount")
            continue
        try:
            proc = subprocess.run([*launcher, script], capture_output=True, text=True, timeout=30)
        except OSError as exc:
            errors.append(f"{launcher[0]}: {exc}")
            continue
        if proc.returncode == 0:
            return launcher
        errors.append(f"{' '.join(launcher[:2])}: {proc.stderr.strip() or proc.returncode}")
    pytest.skip("cannot mount a small tmpfs here: " + "; ".join(errors))


def _pages(folder: Path) -> dict[str, int]:
    """Pages each file of a finished output takes on a tmpfs, by path relative to `folder`."""
    return {str(p.relative_to(folder)): math.ceil(p.stat().st_size / PAGE) for p in folder.rglob("*") if p.is_file()}


def _candidates(out: Path) -> list[dict]:
    return sorted((r.to_row() for r in stores(out)["candidates"].read()), key=lambda r: json.dumps(r, default=str))


def _whole_and_readable(out: Path) -> None:
    """No temp file anywhere; every file present parses whole."""
    assert not [str(p) for p in out.rglob(TMP_GLOB)]
    for path in out.rglob("*"):
        if path.suffix == ".parquet":
            pq.read_table(path)
        elif path.suffix in (".yaml", ".json"):
            yaml.safe_load(path.read_text())  # JSON is YAML


@pytest.mark.slow
def test_a_full_disk_ends_sampling_clearly_and_a_rerun_with_space_finishes_it(micro_world, micro_config, tmp_path):
    from typer.testing import CliRunner

    from rlaifv.cli import app
    from rlaifv.prompts import write_world_prompts

    mnt, keep = tmp_path / "mnt", tmp_path / "partial"
    mnt.mkdir()
    keep.mkdir()
    launcher = _launcher(mnt)
    prompts = write_world_prompts(micro_config.seed, "prompts", N_PROMPTS, tmp_path / "in" / "prompts.jsonl",
                                  micro_config.prior)
    config = tmp_path / "sample.yaml"
    config.write_text("shard_size: 1\nsample:\n  prompts_per_batch: 1\n")  # a shard per prompt

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "rlaifv.cli", "sample", "--prompts", str(prompts), "--out", str(out),
                "--config", str(config), "--policy", str(micro_world.policy), "--n", "2", "--max-new-tokens", "8",
                "--temperature", "1.0"]

    env = {**os.environ, "COLUMNS": "1000"}  # one logical line is one printed line
    whole = tmp_path / "whole"
    done = CliRunner().invoke(app, command(whole)[3:])  # the runs with room run in this process: faster
    assert done.exit_code == 0, done.output[-2000:]

    # room for every file written before sampling's shards (prompts, configs, manifests, locks; a manifest's temp
    # copy while it is rewritten) and half the candidate shards: the sampling stage fills the disk
    pages = _pages(whole)
    shards = sorted(k for k in pages if k.startswith("candidates/shards/"))
    after = ("candidates/shards/", "summary.json", "report.md")  # the summary and report come once sampling is done
    before = sum(n for k, n in pages.items() if not k.startswith(after)) + pages["candidates/manifest.json"]
    kib = (before + sum(pages[k] for k in shards[: len(shards) // 2])) * PAGE // 1024
    full = subprocess.run([*launcher, _mount_script(mnt, kib, keep, command(mnt / "out"))],
                          capture_output=True, text=True, timeout=300, env=env)

    assert full.returncode == 1, full.stderr[-2000:]
    assert "Traceback" not in full.stderr
    [line] = [x for x in full.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith(f"error: no space left on device while writing {mnt / 'out' / 'candidates'}")
    assert line.endswith("free space and rerun: finished shards are kept and the rerun resumes"), line
    partial = keep / "out"
    _whole_and_readable(partial)
    assert 0 < len(_candidates(partial)) < len(_candidates(whole))  # stopped part-way, finished shards kept

    # the space freed: the same command on the same output finishes the job
    rerun = tmp_path / "rerun"
    shutil.copytree(partial, rerun, symlinks=True)
    again = CliRunner().invoke(app, command(rerun)[3:])
    assert again.exit_code == 0, again.output[-2000:]
    _whole_and_readable(rerun)
    assert _candidates(rerun) == _candidates(whole)
    assert not stores(rerun)["candidates"].read_quarantine()


BUILD = """
import sys
from pathlib import Path
import torch
from safetensors.torch import save_file
from rlaifv.files import building, out_of_space
disk = Path(sys.argv[1])
tmp = disk / ".checkpoint-1.tmp"
weights = {"w": torch.zeros(64 * 1024)}  # 256 KiB, on a 64 KiB disk
for save in (lambda: (tmp / "weights.bin").write_bytes(bytes(256 * 1024)),  # Python: an OSError
             lambda: torch.save(weights, tmp / "optimizer.bin"),  # torch: a RuntimeError of its own
             lambda: save_file(weights, tmp / "model.safetensors")):  # safetensors: its own error
    try:
        with building(tmp):
            tmp.mkdir()
            save()
    except OSError as exc:
        print(out_of_space(exc) or repr(exc))
print(sorted(p.name for p in disk.iterdir()))
"""


def test_a_folder_build_that_runs_out_of_space_leaves_nothing(tmp_path):
    """What checkpoints and other folders published in one rename are built under (files.building)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    launcher = _launcher(mnt)
    proc = subprocess.run([*launcher, _mount_script(mnt, 64, tmp_path, [sys.executable, "-c", BUILD, str(mnt)])],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    *messages, left = proc.stdout.splitlines()
    assert messages[0].startswith("no space left on device; free space and rerun"), messages
    for message in messages[1:]:  # torch and safetensors: named as the folder that did not fit
        assert message.startswith(f"no space left on device while writing {mnt / '.checkpoint-1.tmp'}"), messages
    assert len(messages) == 3
    assert left == "[]"  # the half-built folder is gone
