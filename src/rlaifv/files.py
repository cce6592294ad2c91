"""Durable writes: a file or a folder is either absent, the old version, or the whole new one -- never torn.

Every output the package writes outside a store's shards (configs, summaries, reports, exports, checkpoints) goes
through here, so a crash or a power cut mid-write never leaves a half-written file for a rerun to trust. A file is
written to a temp name in its own folder, flushed and fsynced, renamed over its final name (atomic on one
filesystem), and the folder is fsynced so the rename itself survives a power cut. A folder is built under a temp
name by the caller and published with one rename the same way.

Temp names start with a dot and carry the writer's pid (`TMP_GLOB` matches them), so they never look like a
finished file and leftovers of a killed writer can be found and removed.

Crash points (`crash_point`) mark the moments a crash must lose nothing: inside every durable write, between a
stage's records, at every DPO step and checkpoint. They do nothing unless a crash test arms them through the
environment (`KILL_AT_ENV`, `TRACE_ENV`): then the process can be SIGKILLed at exactly the n-th point it passes,
which is how `benchmarks/chaos.py` and `tests/test_chaos.py` kill a run anywhere, reproducibly, and check that the
rerun ends where an uninterrupted run ends.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

TMP_GLOB = ".*.tmp-*"  # the temp names made by `temp_name`
KILL_AT_ENV = "RLAIFV_KILL_AT"  # "NAME:N" SIGKILLs the process at the N-th pass of crash point NAME; "*:N" of any point
TRACE_ENV = "RLAIFV_KILL_TRACE"  # a file that gets one line per crash point passed: "NAME<tab>DETAIL"


class _Armed:
    """What the environment asked of the crash points, read once per process."""

    def __init__(self, kill_at: str, trace: str) -> None:
        self.name, self.at = None, 0
        if kill_at:
            name, _, count = kill_at.rpartition(":")
            if not name or not count.isdigit() or int(count) < 1:
                raise ValueError(f"{KILL_AT_ENV}={kill_at!r}: expected NAME:N or *:N with N >= 1")
            self.name, self.at = name, int(count)
        self.trace = os.open(trace, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if trace else None
        self.passes: Counter[str] = Counter()


_armed: _Armed | None | bool = False  # False: the environment is not read yet; None: nothing armed


def crash_point(name: str, detail: str = "") -> None:
    """A moment a crash must lose nothing at. Unarmed (the normal case), it returns at once.

    Armed by the environment, the main thread's passes are counted -- other threads run at moments no test can
    repeat -- and traced; at the chosen pass the process SIGKILLs itself, after tracing it, so the trace's last line
    names where the process died."""
    global _armed
    if _armed is False:
        kill_at, trace = os.environ.get(KILL_AT_ENV, ""), os.environ.get(TRACE_ENV, "")
        _armed = _Armed(kill_at, trace) if kill_at or trace else None
    if _armed is None or threading.current_thread() is not threading.main_thread():
        return
    armed = _armed
    armed.passes["*"] += 1
    armed.passes[name] += 1
    if armed.trace is not None:
        os.write(armed.trace, f"{name}\t{detail}\n".encode())
    if armed.name is not None and armed.passes[armed.name] == armed.at:
        os.kill(os.getpid(), signal.SIGKILL)


def temp_name(path: Path) -> Path:
    """The temp path a write of `path` goes through: same folder, hidden, this process's own."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def sweep_temps(folder: Path) -> list[Path]:
    """Remove what killed writers left under `folder` (at any depth): files and folders with `temp_name`s whose
    writer is gone. A temp of a live process -- this one, or another still writing -- is kept. Returns what was
    removed. An entry point calls it on its output folder before writing, so a run killed mid-write and rerun ends
    with exactly the files of a run nobody killed."""
    import shutil

    removed = []
    for path in sorted(Path(folder).rglob(TMP_GLOB)) if Path(folder).is_dir() else []:
        pid = path.name.rpartition(".tmp-")[2]
        if pid.isdigit() and _alive(int(pid)):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entry to disk (a folder after a rename makes the rename durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` to a temp file in the same folder, fsync it, rename it over `path`, fsync the folder.

    `write` may open, write and close `tmp` however it likes (Parquet writers, matplotlib, ...); the fsync after it
    returns flushes whatever it wrote. On an error the temp file is removed and `path` is left as it was.
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        write(tmp)
        fsync_path(tmp)
        crash_point("write.temp", path.name)  # the whole new version exists under its temp name only
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    crash_point("write.renamed", path.name)  # renamed, the folder not yet fsynced
    fsync_path(path.parent)


def write_text(path: Path, text: str) -> None:
    """UTF-8 text, written atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes(path: Path, data: bytes) -> None:
    """Bytes, written atomically."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_json(path: Path, obj: Any) -> None:
    """Readable JSON (sorted keys), written atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str))


def write_yaml(path: Path, obj: Any) -> None:
    """Readable YAML (key order kept), written atomically."""
    write_text(path, yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, default_flow_style=False))


def publish_dir(tmp: Path, final: Path) -> None:
    """Rename a finished folder `tmp` (built beside `final`) to `final`, durably: every file and folder under `tmp`
    is fsynced first, so the published folder never holds a file the disk has not got yet, then the parent after
    the rename.

    `final` must not exist or be an empty folder (a folder cannot be renamed over a full one); callers that replace
    an old version move or remove it first.
    """
    for folder, _, names in os.walk(tmp):
        for name in names:
            fsync_path(Path(folder) / name)
        fsync_path(Path(folder))
    crash_point("publish.temp", Path(final).name)  # the folder is whole under its temp name
    os.replace(tmp, final)
    crash_point("publish.renamed", Path(final).name)
    fsync_path(Path(final).parent)
