"""Durable writes: a file or a folder is either absent, the old version, or the whole new one -- never torn.

Every output the package writes outside a store's shards (configs, summaries, reports, exports, checkpoints) goes
through here, so a crash or a power cut mid-write never leaves a half-written file for a rerun to trust. A file is
written to a temp name in its own folder, flushed and fsynced, renamed over its final name (atomic on one
filesystem), and the folder is fsynced so the rename itself survives a power cut. A folder is built under a temp
name by the caller and published with one rename the same way.

Temp names start with a dot and carry the writer's pid (`TMP_GLOB` matches them), so they never look like a
finished file and leftovers of a killed writer can be found and removed.

A full disk (or quota) is an error like any other here: the temp file or folder is removed, the final name keeps
its old version, and the error names the file that did not fit (`out_of_space`), so a command can say what to
free and that a rerun resumes.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

TMP_GLOB = ".*.tmp-*"  # the temp names made by `temp_name`
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # a write that failed for space: the disk is full, or the user's quota


def out_of_space(exc: BaseException) -> str:
    """The one-line message for a write that failed for space ("" for any other error): what did not fit, and
    that freeing space and rerunning finishes the job, since nothing half-written was kept."""
    if not isinstance(exc, OSError) or exc.errno not in NO_SPACE:
        return ""
    where = f" while writing {exc.filename}" if exc.filename else ""
    return f"no space left on device{where}; free space and rerun: finished shards are kept and the rerun resumes"


def temp_name(path: Path) -> Path:
    """The temp path a write of `path` goes through: same folder, hidden, this process's own."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


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
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in NO_SPACE and not exc.filename:  # Arrow's and Python's write errors name no file
            raise OSError(exc.errno, os.strerror(exc.errno), str(path)) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)
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


@contextmanager
def building(tmp: Path) -> Iterator[Path]:
    """Around the build of a folder under the temp name `tmp` (then `publish_dir`): on any error -- a full disk
    above all -- the half-built folder is removed, so it neither holds the space the rerun needs nor passes for
    a finished one."""
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    os.replace(tmp, final)
    fsync_path(Path(final).parent)
