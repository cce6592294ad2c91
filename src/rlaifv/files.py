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

Crash points (`crash_point`) mark the moments a crash must lose nothing: inside every durable write, between a
stage's records, at every DPO step and checkpoint. They do nothing unless a crash test arms them through the
environment (`KILL_AT_ENV`, `TRACE_ENV`): then the process can be SIGKILLed at exactly the n-th point it passes,
which is how `benchmarks/chaos.py` and `tests/test_chaos.py` kill a run anywhere, reproducibly, and check that the
rerun ends where an uninterrupted run ends.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def sweep_temps(folder: Path) -> list[Path]:
    """Remove what killed writers left under `folder` (at any depth): files and folders with `temp_name`s whose
    writer is gone. A temp of a live process -- this one, or another still writing -- is kept. Returns what was
    removed. An entry point calls it on its output folder before writing, so a run killed mid-write and rerun ends
    with exactly the files of a run nobody killed."""
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
    except OSError as exc:
        if exc.errno in NO_SPACE and not exc.filename:  # Arrow's and Python's write errors name no file
            raise OSError(exc.errno, os.strerror(exc.errno), str(path)) from exc
        raise
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


@contextmanager
def building(tmp: Path) -> Iterator[Path]:
    """Around the build of a folder under the temp name `tmp` (then `publish_dir`): on any error -- a full disk
    above all -- the half-built folder is removed, so it neither holds the space the rerun needs nor passes for
    a finished one."""
    try:
        yield tmp
    except BaseException as exc:
        full = isinstance(exc, Exception) and not out_of_space(exc) and _disk_full(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if full:  # torch.save and safetensors say so in a RuntimeError of their own
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp)) from exc
        raise


def _disk_full(path: Path) -> bool:
    """Whether the filesystem that holds `path` has under 1 MiB left for this user: an error met while writing
    there then is a full disk, whatever the library that wrote called it."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize < 1 << 20


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


# -- integrity: checksums, manifests, corrupt files -----------------------------------------------------------------
#
# A rename makes a write atomic, not the bytes durable forever: a disk error, a copy cut short or a hand edit can
# still leave a torn or altered file behind a finished name. Every file the package publishes as part of a unit (a
# store's shards, a checkpoint's files) is therefore listed with its sha256 and size in the unit's manifest, and
# checked against it before it is used.

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "rlaifv.manifest/1"  # a manifest.json without it is someone else's file, never read as ours
RERUN = "rerun the same command: the stage that wrote it recomputes it"
_CHUNK = 8 << 20  # bytes hashed per read: multi-GB checkpoints never sit in memory whole
_SEEN: dict[tuple[Any, ...], Any] = {}  # (what, file identity) -> result, so a process checks one version once


class CorruptFile(OSError):
    """A file whose bytes are not what was published (other checksum, truncated, unreadable, missing).

    It is never used. An OSError, so a command ends with one line and exit code 1; `path` names the file and
    `expected`/`actual` the checksums where known, so a caller that knows which step wrote it can redo that step.
    """

    def __init__(self, path: Path, why: str, expected: str | None = None, actual: str | None = None,
                 hint: str = RERUN) -> None:
        self.path, self.why, self.expected, self.actual = Path(path), why, expected, actual
        super().__init__(f"{path} is corrupt ({why}); it is not used: {hint}")


def once_per_version(path: Path, what: str, compute: Callable[[Path], Any]) -> Any:
    """compute(path), remembered for this version of the file: same inode, size and mtime. A hard link of a checked
    file (a published copy of a checkpoint) is the same inode, so it is not checked twice; any rewrite of the file
    changes its mtime and is checked again."""
    st = Path(path).stat()
    key = (what, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _SEEN:
        _SEEN[key] = compute(Path(path))
    return _SEEN[key]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    """The file's sha256, read in chunks, computed once per version of the file in this process."""
    return once_per_version(path, "sha256", _sha256)


def file_entry(path: Path) -> dict[str, Any]:
    """What a manifest records of one file: its sha256 and its size in bytes."""
    return {"sha256": sha256_of(path), "bytes": Path(path).stat().st_size}


def check_entry(path: Path, entry: dict[str, Any]) -> CorruptFile | None:
    """None when `path` matches its manifest `entry`, else the CorruptFile saying how it differs."""
    path = Path(path)
    if not path.is_file():
        return CorruptFile(path, "listed in its manifest but missing", entry.get("sha256"))
    size = path.stat().st_size
    if size != entry["bytes"]:
        return CorruptFile(path, f"{size} bytes, its manifest records {entry['bytes']}: truncated or altered",
                           entry["sha256"])
    actual = sha256_of(path)
    if actual != entry["sha256"]:
        return CorruptFile(path, f"sha256 {actual[:16]}..., its manifest records {entry['sha256'][:16]}...",
                           entry["sha256"], actual)
    return None


def read_manifest(folder: Path) -> dict[str, dict[str, Any]] | None:
    """The entries (path relative to `folder` -> entry) of folder's manifest; None when it has none, or one that
    is unreadable or not ours (the files are then checked as if never listed)."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("files"), dict):
        return None
    return data["files"]


def write_manifest(folder: Path, entries: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Write folder's manifest, atomically: `entries` as given, or every file under `folder` hashed now (temp
    files and the manifest itself left out). Returns the entries."""
    folder = Path(folder)
    if entries is None:
        entries = {}
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.name != MANIFEST and not path.match(TMP_GLOB):
                entries[path.relative_to(folder).as_posix()] = file_entry(path)
    write_json(folder / MANIFEST, {"format": MANIFEST_FORMAT, "files": entries})
    return entries


def verify_tree(folder: Path, under: str = "") -> None:
    """Raise CorruptFile for the first file of folder's manifest (those under the relative path `under`, if given)
    that is missing or differs; a folder without a manifest (written by an older version) passes unchecked."""
    entries = read_manifest(folder)
    prefix = under.strip("/") + "/" if under else ""
    for rel, entry in (entries or {}).items():
        if rel.startswith(prefix):
            problem = check_entry(Path(folder) / rel, entry)
            if problem is not None:
                raise problem


def verify_published(path: str | Path) -> None:
    """Check a model folder before it is loaded: against its own manifest, or its parent's (a checkpoint's
    `model/`, listed in the checkpoint's manifest). Hub ids and folders without a manifest pass unchecked."""
    path = Path(path)
    if not path.is_dir():
        return
    if read_manifest(path) is not None:
        verify_tree(path)
    elif read_manifest(path.parent) is not None:
        verify_tree(path.parent, path.name)


def move_aside(path: Path, root: Path, why: str) -> Path:
    """Move a corrupt file or folder under `root`/corrupt/ (its path under `root` flattened into the name), with a
    note of why beside it: out of the way of readers and of the rerun that recomputes it, kept for a look."""
    path, root = Path(path), Path(root)
    aside = root / "corrupt"
    aside.mkdir(parents=True, exist_ok=True)
    rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
    dest = aside / rel.replace("/", "__")
    n = 1
    while dest.exists():
        dest = aside / f"{rel.replace('/', '__')}.{n}"
        n += 1
    os.replace(path, dest)
    fsync_path(aside)
    fsync_path(path.parent)
    write_text(dest.with_name(dest.name + ".why.txt"), f"{path}: {why}\n")
    return dest
