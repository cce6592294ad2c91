"""One writer per folder: a second process writing into a folder that one is already writing into is refused.

Two writers in one output folder would interleave shards, both resume the same missing records and overwrite each
other's state files. A writer therefore holds an exclusive `flock` on `FOLDER/.rlaifv.lock` for as long as it
writes, and a second process asking for it gets `FolderInUse` at once, naming the holder from what the lock file
says (pid, host, command line, start time).

Why `flock`: the kernel drops the lock when the holding process dies, however it dies (SIGKILL, OOM, power), so a
killed run never leaves a folder locked and there is no stale-lock cleanup to get wrong. The file itself stays; its
content only describes the current holder.

Whoever takes a folder is its only writer, so it first removes what killed writers left in it (`files.sweep_temps`:
temp files and folders of dead processes): a run killed mid-write and rerun ends with exactly the files of a run
nobody killed.

Within one process, taking a folder it already holds is a no-op (counted, released by the outermost holder): a
pipeline holds its output folder and the stages it calls take their own stores under it. A per-process registry is
needed because two `open()`s of one file in one process hold two independent flocks, which would conflict.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rlaifv.files import sweep_temps

LOCK_NAME = ".rlaifv.lock"

_HELD: dict[Path, list[int]] = {}  # lock file -> [fd, times taken]
_GUARD = threading.Lock()


class FolderInUse(OSError):
    """Another process holds the folder. An OSError, so a command ends with this one line and exit code 1."""

    def __init__(self, folder: Path, holder: dict) -> None:
        self.folder, self.holder = Path(folder), holder
        if holder.get("pid"):
            who = (f"pid {holder['pid']}" + (f" on {holder['host']}" if holder.get("host") else "")
                   + (f" ({holder['command']})" if holder.get("command") else "")
                   + (f" since {holder['since']}" if holder.get("since") else ""))
        else:
            who = "another process"
        super().__init__(f"{folder} is in use by {who}; wait for it to finish or stop it, then rerun")


def _command() -> str:
    """This process's command line as a person would type it (`rlaifv iterate ...`), cut to a readable length."""
    argv = list(sys.argv) or ["python"]
    name = Path(argv[0]).name
    if name in ("__main__.py", "rlaifv") or argv[0].endswith("rlaifv/cli/__main__.py"):
        argv[0] = "rlaifv"
    text = shlex.join(argv)
    return text if len(text) <= 200 else text[:197] + "..."


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def lock_path(target: Path, file: bool = False) -> Path:
    """The lock file of a folder (inside it), or of a single output file (`file`: hidden, beside it)."""
    target = Path(target).resolve()
    return target.with_name(f".{target.name}{LOCK_NAME}") if file else target / LOCK_NAME


@contextmanager
def hold(target: Path, file: bool = False) -> Iterator[Path]:
    """Hold the folder `target` (created if missing) for writing while the block runs, or with `file` the output
    file `target` (its folder created); FolderInUse if another process holds it."""
    folder = Path(target).resolve()
    path = lock_path(folder, file)
    created = not file and not folder.exists()  # made here: removed again if the holder leaves nothing in it
    path.parent.mkdir(parents=True, exist_ok=True)
    with _GUARD:
        held = _HELD.get(path)
        if held is not None:
            held[1] += 1
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise FolderInUse(folder, _holder(path)) from None
            except BaseException:
                os.close(fd)
                raise
            info = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command(),
                    "since": time.strftime("%Y-%m-%d %H:%M:%S %z")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
            _HELD[path] = [fd, 1]
            if not file:
                sweep_temps(folder)
    try:
        yield folder
    finally:
        with _GUARD:
            held = _HELD[path]
            held[1] -= 1
            if held[1] == 0:
                del _HELD[path]
                if created and [p.name for p in folder.iterdir()] == [LOCK_NAME]:  # a command that kept nothing
                    path.unlink()  # (e.g. one refused before it wrote) leaves no folder behind
                    folder.rmdir()
                fcntl.flock(held[0], fcntl.LOCK_UN)
                os.close(held[0])


def holds(target: Path, file: bool = False) -> bool:
    """Whether this process holds `target`."""
    return lock_path(target, file) in _HELD
