"""Durable writes: a file or a folder is either absent, the old version, or the whole new one -- never torn.

Every output the package writes outside a store's shards (configs, summaries, reports, exports, checkpoints) goes
through here, so a crash or a power cut mid-write never leaves a half-written file for a rerun to trust. A file is
written to a temp name in its own folder, flushed and fsynced, renamed over its final name (atomic on one
filesystem), and the folder is fsynced so the rename itself survives a power cut. A folder is built under a temp
name by the caller and published with one rename the same way.

Temp names start with a dot and carry the writer's pid (`TMP_GLOB` matches them), so they never look like a
finished file and leftovers of a killed writer can be found and removed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

TMP_GLOB = ".*.tmp-*"  # the temp names made by `temp_name`


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
