"""One writer per folder, with real processes: a second one is refused with the holder named, a SIGKILLed holder
leaves nothing stuck, and one process re-entering what it holds (a pipeline, then its stores) is never refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rlaifv.lock import LOCK_NAME, FolderInUse, hold, holds
from rlaifv.records import Generation
from rlaifv.store import ShardedStore

SRC = Path(__file__).resolve().parents[1] / "src"

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from rlaifv.lock import hold
    with hold(Path(sys.argv[1])):
        print("holding", flush=True)
        time.sleep(120)
""")


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def start_holder(folder: Path) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True,
                             env=env())
    assert child.stdout is not None and child.stdout.readline().strip() == "holding"
    return child


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    child = start_holder(tmp_path / "out")
    try:
        with pytest.raises(FolderInUse) as caught:
            with hold(tmp_path / "out"):
                pass
        message = str(caught.value)
        assert f"pid {child.pid}" in message and str(tmp_path / "out") in message and "wait for it" in message
        assert json.loads((tmp_path / "out" / LOCK_NAME).read_text())["pid"] == child.pid
        store = ShardedStore(tmp_path / "out", Generation)  # a store's writer in that folder: refused too
        with pytest.raises(FolderInUse):
            with store.writer():
                pass
        with hold(tmp_path / "other"):  # another folder is free
            pass
    finally:
        child.kill()
        child.wait()


def test_a_sigkilled_holder_leaves_the_folder_free(tmp_path):
    child = start_holder(tmp_path / "out")
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    with hold(tmp_path / "out"):  # the kernel dropped the lock with the process
        assert holds(tmp_path / "out")
    assert not holds(tmp_path / "out")


def test_one_process_reenters_a_folder_it_holds_and_its_subfolders(tmp_path):
    with hold(tmp_path / "run"):
        with hold(tmp_path / "run"):  # a library call under a command holding the same folder
            store = ShardedStore(tmp_path / "run" / "round-1" / "collect" / "candidates", Generation)
            with store.writer() as w:  # a store under it
                w.add(Generation("p0", "a", 0))
        assert holds(tmp_path / "run")  # the outer hold is still there
    assert not holds(tmp_path / "run")
    child = start_holder(tmp_path / "run")  # and released for others once the outermost block ends
    child.kill()
    child.wait()


def test_the_cli_refuses_a_second_run_with_one_line_and_exit_code_1(tmp_path):
    out = tmp_path / "feedback"
    child = start_holder(out)
    try:
        begun = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "rlaifv.cli", "pairs", "--out", str(out)], capture_output=True,
                              text=True, env={**env(), "COLUMNS": "400"}, timeout=120)
    finally:
        child.kill()
        child.wait()
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert f"pid {child.pid}" in lines[0] and str(out) in lines[0]
    assert time.monotonic() - begun < 60  # refused at once, not after waiting


def test_a_folder_the_holder_made_and_left_empty_is_removed(tmp_path):
    """A command refused before it wrote anything leaves no output folder behind (only its lock would be in it);
    a folder that was there before, or got files, stays."""
    made, kept, existing = tmp_path / "made", tmp_path / "kept", tmp_path / "existing"
    with hold(made):
        assert (made / ".rlaifv.lock").is_file()
    assert not made.exists()
    with hold(kept):
        (kept / "report.md").write_text("x")
    assert sorted(p.name for p in kept.iterdir()) == [".rlaifv.lock", "report.md"]
    existing.mkdir()
    with hold(existing):
        pass
    assert existing.is_dir()
