"""Sharded Parquet store: stage output that survives a crash without loss or duplicates.

Layout of one store (one stage's output)::

    root/config.yaml                      # the config that fills it (bind_config)
    root/shards/part-00000.parquet ...    # records, shard_size per file
    root/quarantine/part-00000.parquet    # bad input, with a reason
    root/manifest.json                    # sha256, bytes and rows of every shard above
    root/corrupt/                         # shards found corrupt, moved aside with a note of why
    root/.rlaifv.lock                     # held by the one process writing (rlaifv.lock)

Each shard is written to a temp file in the same folder, fsynced, then renamed
over its final name, so a reader (or a resumed run) sees whole shards or none.
A SIGKILL loses at most the writer's unflushed buffer; the rerun recomputes
exactly that, because ``done_keys()`` lists every record already on disk.
One writer per store at a time: ``writer()`` holds the folder, and a second
process opening one is refused (``rlaifv.lock.FolderInUse``).

Every shard is checked against the manifest before its records are used (once
per version of the file in a process), because a rename protects against a
crash, not against a disk or a copy that alters bytes later. A shard not in the
manifest (a crash between its rename and the manifest's update, or a store of an
older version without one) is read whole and adopted when it parses with the
record's columns. A corrupt shard is never read: a reader raises
``rlaifv.files.CorruptFile`` naming it, and the stage that wrote the store,
when it opens its writer on a rerun, moves the shard to ``corrupt/``, logs it,
and recomputes its records (they are no longer in ``done_keys()``).

A stage binds its config to its store when it opens it (``bind_config``): the
first run records it, and a rerun with a config that could change the records
is refused with the fields that differ, instead of silently adding a second
run's records to the first one's. Fields that cannot change the records (a shard
size, a server's timeout, ...) are declared per config class in
``FREE_ON_RESUME`` and may differ. The same check guards the other folders a rerun
resumes (the iterate loop's state, a DPO run, benchmark answers): `bind_config`
for a YAML file, `check_config` for a record kept elsewhere.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel

from rlaifv.files import (
    MANIFEST,
    CorruptFile,
    atomic_write,
    check_entry,
    crash_point,
    file_entry,
    fsync_path,
    move_aside,
    once_per_version,
    read_manifest,
    write_json,
    write_manifest,
    write_yaml,
)
from rlaifv.lock import hold
from rlaifv.progress import Bar, log
from rlaifv.records import BadInput, Quarantined, Record

__all__ = [
    "ConfigChanged", "CorruptFile", "SetAside", "ShardWriter", "ShardedStore", "atomic_write", "bind_config",
    "check_config", "config_changes", "free_paths", "fsync_path", "run_in_batches", "write_json",
]

FORCE_HINT = "rerun with --force-config"  # how a command continues a store made with another config on purpose

R = TypeVar("R", bound=Record)
T = TypeVar("T")  # a stage's unit of work (a prompt, a candidate)
P = TypeVar("P")  # what a unit needs computed (its image, ...)
A = TypeVar("A")  # the computed answer for a unit

_PART = re.compile(r"^part-(\d+)\.parquet$")


def _part_paths(folder: Path) -> list[Path]:
    """Completed shards in index order; temp files (dot-prefixed) never match."""
    if not folder.is_dir():
        return []
    parts = [
        (int(m.group(1)), p) for p in folder.iterdir() if (m := _PART.match(p.name))
    ]
    return [p for _, p in sorted(parts)]


def _next_part(folder: Path) -> Path:
    """The shard after the highest existing one: reruns append, never overwrite."""
    parts = _part_paths(folder)
    last = _PART.match(parts[-1].name) if parts else None
    index = int(last.group(1)) + 1 if last else 0
    return folder / f"part-{index:05d}.parquet"


def _validate(path: Path, schema: pa.Schema) -> dict[str, Any] | str:
    """The manifest entry of a shard the manifest lacks when it reads whole with the columns of `schema`, else
    why it cannot be used."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        return f"not a readable Parquet file: {exc}"
    missing = [name for name in schema.names if name not in table.schema.names]
    if missing:
        return f"lacks the columns {missing} of its records"
    return {**file_entry(path), "rows": table.num_rows}


def _to_json(record: Any) -> str:
    """JSON of an offending input, whatever it is: quarantining must never fail."""
    if isinstance(record, Record):
        record = dataclasses.asdict(record)  # type: ignore[call-overload]

    def fallback(value: Any) -> Any:
        if isinstance(value, bytes | bytearray):
            return base64.b64encode(value).decode("ascii")
        return str(value)

    return json.dumps(record, sort_keys=True, ensure_ascii=False, default=fallback)


# -- the config a store (or a resumable folder) was made with -----------------------------------------------------

_ABSENT = object()


def free_paths(config: BaseModel, prefix: str = "") -> set[str]:
    """Dotted paths of the fields of `config` that may differ on a rerun: each config class declares its own in
    ``FREE_ON_RESUME`` (rlaifv.config), and a nested config contributes its own under its field's name."""
    paths = {prefix + name for name in getattr(config, "FREE_ON_RESUME", ())}
    for name in type(config).model_fields:
        value = getattr(config, name)
        if isinstance(value, BaseModel) and prefix + name not in paths:
            paths |= free_paths(value, f"{prefix}{name}.")
    return paths


def _plain(value: Any) -> Any:
    """JSON-shaped data (tuples as lists, keys as text), so a config compares equal to its stored copy."""
    return json.loads(json.dumps(value, default=str))


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any],
                   free: Iterable[str] = ()) -> list[tuple[str, Any, Any]]:
    """(dotted path, old value, new value) of every field that differs, nested mappings walked field by field, in
    the new config's order; a path in `free` (or under one) is skipped. A field only one side has is compared with
    an absent value."""
    skip, changes = set(free), []

    def walk(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str) -> None:
        for key in [*b, *(k for k in a if k not in b)]:
            path = f"{prefix}{key}"
            if path in skip:
                continue
            x, y = a.get(key, _ABSENT), b.get(key, _ABSENT)
            if isinstance(x, Mapping) and isinstance(y, Mapping):
                walk(x, y, path + ".")
            elif x != y:
                changes.append((path, x, y))

    walk(_plain(old), _plain(new), "")
    return changes


def _show(value: Any) -> str:
    text = "(absent)" if value is _ABSENT else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


class ConfigChanged(ValueError):
    """A rerun into a folder made with another config: resuming would mix the records of two runs in one store.

    The message lists what differs (dotted paths, old -> new), how to start fresh and, where a command offers it,
    how to continue deliberately.
    """

    def __init__(self, where: Path, changes: list[tuple[str, Any, Any]], free: Iterable[str] = (),
                 fresh: str | None = None, deliberate: str | None = FORCE_HINT) -> None:
        self.where, self.changes = Path(where), changes
        lines = [f"{where} was made with another config, and resuming it with this one would mix two runs' "
                 f"results in one folder. What differs (old -> new):"]
        lines += [f"  {path}: {_show(old)} -> {_show(new)}" for path, old, new in changes]
        free = sorted(free)
        if free:
            lines.append(f"(a rerun may change only: {', '.join(free)})")
        lines.append(f"To start fresh: {fresh or f'use a new output folder, or delete {where}'}."
                     + (f" To continue it with the new config on purpose: {deliberate}." if deliberate else ""))
        super().__init__("\n".join(lines))


def _as_data(config: BaseModel | Mapping[str, Any], free: Iterable[str]) -> tuple[dict[str, Any], set[str]]:
    if isinstance(config, BaseModel):
        return config.model_dump(mode="json"), set(free) | free_paths(config)
    return dict(config), set(free)


def check_config(where: Path, old: Mapping[str, Any] | None, new: BaseModel | Mapping[str, Any],
                 free: Iterable[str] = (), *, force: bool = False, fresh: str | None = None,
                 deliberate: str | None = FORCE_HINT) -> dict[str, Any]:
    """The record to keep for a rerun of what `old` recorded (None: a first run) with `new`: `new` as data.

    Raises ConfigChanged when a field outside `free` (and the config classes' FREE_ON_RESUME) differs, unless
    `force`, which logs what differs and goes on with the new config.
    """
    data, free = _as_data(new, free)
    changes = config_changes(old, data, free) if old is not None else []
    if changes and not force:
        raise ConfigChanged(where, changes, free, fresh, deliberate)
    if changes:
        shown = ", ".join(f"{path} {_show(a)} -> {_show(b)}" for path, a, b in changes)
        log(f"[yellow]{where}: continuing with another config ({shown}); its records now mix both")
    return data


def bind_config(path: Path, config: BaseModel | Mapping[str, Any], free: Iterable[str] = (), *,
                force: bool = False, where: Path | None = None, fresh: str | None = None,
                deliberate: str | None = FORCE_HINT) -> dict[str, Any]:
    """Bind the folder of the YAML file `path` to `config`: record it on a first run; on a rerun, refuse a config
    that differs outside the free fields (`check_config`), and record the new one when anything (a free field, or
    everything with `force`) changed. An unchanged file is not rewritten. Returns the config as data."""
    path = Path(path)
    old = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else None
    data = check_config(where or path.parent, old, config, free, force=force, fresh=fresh, deliberate=deliberate)
    if old is None or _plain(old) != _plain(data):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_yaml(path, data)
    return data


class ShardedStore(Generic[R]):
    """Records of one type in numbered Parquet shards under ``root``.

    ``stage`` names the store in its quarantine rows (default: ``root.name``). ``force_config`` lets
    :meth:`bind_config` continue a store made with another config (a command's ``--force-config``).
    """

    def __init__(
        self,
        root: Path,
        record_type: type[R],
        shard_size: int = 1000,
        stage: str | None = None,
        force_config: bool = False,
    ) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.root = Path(root)
        self.record_type = record_type
        self.shard_size = shard_size
        self.stage = stage if stage is not None else self.root.name
        self.shards_dir = self.root / "shards"
        self.quarantine_dir = self.root / "quarantine"
        self.config_path = self.root / "config.yaml"
        self.force_config = force_config

    def __repr__(self) -> str:
        return f"ShardedStore({str(self.root)!r}, {self.record_type.__name__})"

    # -- reading ---------------------------------------------------------------

    def shard_paths(self) -> list[Path]:
        """Completed record shards, in write order."""
        return _part_paths(self.shards_dir)

    def quarantine_paths(self) -> list[Path]:
        """Completed quarantine shards, in write order."""
        return _part_paths(self.quarantine_dir)

    def done_keys(self) -> set[str]:
        """Keys a resumed stage must skip: every stored and every quarantined record.

        Reads only the key columns, so it stays cheap on stores with large rows.
        """
        key_fields = list(self.record_type.KEY_FIELDS)
        keys: set[str] = set()
        shards, quarantine = self._checked()
        for path in shards:
            cols = pq.ParquetFile(path).read(columns=key_fields).to_pydict()
            for values in zip(*(cols[name] for name in key_fields), strict=True):
                keys.add(
                    self.record_type.key_of(dict(zip(key_fields, values, strict=True)))
                )
        for path in quarantine:
            keys.update(
                pq.ParquetFile(path)
                .read(columns=["record_key"])["record_key"]
                .to_pylist()
            )
        return keys

    def read(self) -> Iterator[R]:
        """Records in shard order, one batch in memory at a time."""
        for path in self._checked()[0]:
            for batch in pq.ParquetFile(path).iter_batches():
                for row in batch.to_pylist():
                    yield self.record_type.from_row(row)

    def read_all(self) -> list[R]:
        """Every record in memory; for small stores and tests."""
        return list(self.read())

    def read_quarantine(self) -> list[Quarantined]:
        """Quarantined inputs with their reasons."""
        return [
            Quarantined.from_row(row)
            for path in self._checked()[1]
            for row in pq.read_table(path).to_pylist()
        ]

    def __len__(self) -> int:
        """Number of stored records, from Parquet footers (no data read)."""
        return sum(
            pq.ParquetFile(path).metadata.num_rows for path in self._checked()[0]
        )

    def to_table(self) -> pa.Table:
        """All shards as one Arrow table (empty, with the schema, when none)."""
        tables = [pq.ParquetFile(path).read() for path in self._checked()[0]]
        if not tables:
            return self.record_type.arrow_schema().empty_table()
        return pa.concat_tables(tables)

    # -- integrity -------------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def _audit(self) -> tuple[dict[str, dict[str, Any]], list[CorruptFile], bool]:
        """(manifest entries of every good shard, the corrupt ones, whether the manifest on disk is out of date).

        A listed shard must match its checksum; an unlisted one (a crash after its rename, or a store without a
        manifest) must parse whole with the record's columns, and is then adopted. A listed shard that is gone is
        reported too: its records were lost, not skipped.
        """
        listed = read_manifest(self.root)
        stale = listed is None
        listed = listed or {}
        present = {p.relative_to(self.root).as_posix(): p for p in (*self.shard_paths(), *self.quarantine_paths())}
        good: dict[str, dict[str, Any]] = {}
        bad: list[CorruptFile] = []
        for rel, entry in listed.items():
            problem = check_entry(self.root / rel, entry)
            if problem is None:
                good[rel] = entry
            else:
                bad.append(problem)
        for rel, path in present.items():
            if rel in listed:
                continue
            stale = True
            record = Quarantined if path.parent == self.quarantine_dir else self.record_type
            schema = record.arrow_schema()
            adopted = once_per_version(path, f"adopt:{','.join(schema.names)}", lambda p, s=schema: _validate(p, s))
            if isinstance(adopted, str):
                bad.append(CorruptFile(path, adopted))
            else:
                good[rel] = adopted
        return good, bad, stale or bool(bad)

    def _checked(self) -> tuple[list[Path], list[Path]]:
        """(record shards, quarantine shards), each matching the manifest; CorruptFile for the first that does not."""
        good, bad, stale = self._audit()
        if bad:
            raise bad[0]
        if stale and good:
            self._record(good)
        return (
            [p for p in self.shard_paths() if p.relative_to(self.root).as_posix() in good],
            [p for p in self.quarantine_paths() if p.relative_to(self.root).as_posix() in good],
        )

    def _record(self, good: dict[str, dict[str, Any]]) -> None:
        """Write the manifest a reader found out of date (a shard adopted) when no other process is writing here:
        a store that a run killed between a shard's rename and its listing finished without opening a writer
        again is then listed whole on disk, not only in this process's memory. Another writer, or a folder this
        process may not write, leaves it to the next writer."""
        try:
            with hold(self.root):
                write_manifest(self.root, good)
        except OSError:  # FolderInUse included
            pass

    def verify(self) -> None:
        """Raise CorruptFile if any shard differs from its manifest (or, unlisted, does not parse)."""
        self._checked()

    def _repair(self) -> dict[str, dict[str, Any]]:
        """Before writing: move corrupt shards aside (logged), record adopted ones; the manifest's entries."""
        good, bad, stale = self._audit()
        for problem in bad:
            where = "it was listed but is gone"
            if problem.path.exists():
                where = f"moved to {move_aside(problem.path, self.root, problem.why)}"
            log(f"[yellow]{problem.path} is corrupt ({problem.why}): {where}; its records will be recomputed")
        if stale:
            write_manifest(self.root, good)
        return good

    # -- writing ---------------------------------------------------------------

    @contextmanager
    def writer(self) -> Iterator[ShardWriter[R]]:
        """A writer that appends new shards; buffered records are flushed on exit.

        Also on an exception: records already added are complete, so keeping them
        saves recomputing them. The folder is held for the writer's life (a second
        process is refused). Temp files left by a killed run are removed first, and
        corrupt shards are moved aside so their records count as not done.
        """
        with hold(self.root):  # which also removes temp files of killed writers
            for folder in (self.shards_dir, self.quarantine_dir):
                folder.mkdir(parents=True, exist_ok=True)
            w = ShardWriter(self, self._repair())
            try:
                yield w
            finally:
                w.flush()

    def _write_part(
        self, folder: Path, rows: list[dict[str, Any]], schema: pa.Schema, entries: dict[str, dict[str, Any]]
    ) -> Path:
        """One shard, published by rename, then listed in the manifest (`entries`, updated in place). A crash
        between the two leaves a whole shard the manifest lacks, which the next writer adopts."""
        table = pa.Table.from_pylist(rows, schema=schema)
        path = _next_part(folder)
        atomic_write(path, lambda tmp: pq.write_table(table, tmp))
        entries[path.relative_to(self.root).as_posix()] = {**file_entry(path), "rows": table.num_rows}
        write_manifest(self.root, entries)
        return path

    # -- config ----------------------------------------------------------------

    def bind_config(self, config: BaseModel | Mapping[str, Any], free: Iterable[str] = (),
                    deliberate: str | None = FORCE_HINT) -> dict[str, Any]:
        """Bind this store to the config that fills it, before a stage writes to it: recorded in config.yaml on the
        first run; a rerun with a config that could change the records raises ConfigChanged naming the fields that
        differ, so two runs never mix in one store (unless the store was opened with ``force_config``). `free`
        adds paths that may differ to those the config classes declare."""
        return bind_config(self.config_path, config, free, force=self.force_config, where=self.root,
                           deliberate=deliberate)

    def check_config(self, config: BaseModel | Mapping[str, Any], free: Iterable[str] = ()) -> None:
        """Raise ConfigChanged as :meth:`bind_config` would, without writing anything: a pipeline checks before it
        loads a model that the stage would then refuse."""
        if not self.force_config:
            old = self.read_config() if self.config_path.is_file() else None
            check_config(self.root, old, config, free)

    def write_config(self, config: Mapping[str, Any]) -> Path:
        """Record what produced this store, as readable YAML (key order kept), whatever was recorded before. For
        stores whose config is an echo, not a contract: prompt ingest (a store may take several sources) and the
        pairs (rebuilt whole when their config changes); a stage binds its config instead (:meth:`bind_config`)."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_yaml(self.config_path, dict(config))
        return self.config_path

    def read_config(self) -> dict[str, Any]:
        """The config written by :meth:`write_config` ({} when empty)."""
        return yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}


class ShardWriter(Generic[R]):
    """Buffers records and writes every ``shard_size`` of them as one new shard.

    Get one from :meth:`ShardedStore.writer`. A key seen twice (already stored,
    quarantined, or added earlier) raises ``ValueError``: duplicates are a bug.
    """

    def __init__(self, store: ShardedStore[R], entries: dict[str, dict[str, Any]]) -> None:
        self.store = store
        self._entries = entries  # the store's manifest, kept up to date as shards are written
        self._seen = store.done_keys()
        self._rows: list[dict[str, Any]] = []  # rows, so a bad record fails in add()
        self._quarantined: list[dict[str, Any]] = []

    def __contains__(self, key: str) -> bool:
        """Whether ``key`` is done (stored, quarantined, or added in this writer)."""
        return key in self._seen

    def add(self, record: R) -> None:
        self.add_unit([record])

    def add_unit(self, records: list[R]) -> None:
        """Add the records of one unit of work (e.g. every claim of one response) so they land in the same shard.

        A shard boundary never splits a unit, so after a crash a unit is either wholly stored or wholly missing,
        and a resumed stage can tell what is done from any one of its keys.
        """
        for record in records:
            if not isinstance(record, self.store.record_type):
                raise TypeError(
                    f"{self.store!r} stores {self.store.record_type.__name__}, "
                    f"got {type(record).__name__}"
                )
        rows = [record.to_row() for record in records]
        for record in records:
            self._claim(record.key)
        self._rows.extend(rows)
        if len(self._rows) >= self.store.shard_size:
            self.flush()
        crash_point(f"record.{self.store.stage}")  # the unit is buffered or written

    def quarantine(self, key: str, reason: str, record: Any) -> None:
        """Set aside bad input under ``key`` with a reason; it then counts as done."""
        row = Quarantined(self.store.stage, key, reason, _to_json(record)).to_row()
        self._claim(key)
        self._quarantined.append(row)
        if len(self._quarantined) >= self.store.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write buffered records and quarantined inputs as new shards, if any."""
        if self._rows:
            schema = self.store.record_type.arrow_schema()
            self.store._write_part(self.store.shards_dir, self._rows, schema, self._entries)
            self._rows = []
        if self._quarantined:
            schema = Quarantined.arrow_schema()
            self.store._write_part(self.store.quarantine_dir, self._quarantined, schema, self._entries)
            self._quarantined = []

    def _claim(self, key: str) -> None:
        if key in self._seen:
            raise ValueError(f"duplicate key {key!r} in {self.store!r}")
        self._seen.add(key)


# -- the loop the batch stages share ----------------------------------------------------------------------------


class SetAside(NamedTuple):
    """What `run_in_batches`'s `to_records` returns for a unit it cannot turn into records: quarantined with
    `reason`, keeping `row` as the offending input (None: the unit's own row, from `quarantine_as`)."""

    reason: str
    row: Any = None


def run_in_batches(
    writer: ShardWriter[R],
    units: Sequence[T],
    batch_size: int,
    *,
    pending: Callable[[T], bool],
    compute: Callable[[list[T], list[T], list[P]], list[A | BadInput]],
    to_records: Callable[[T, A], list[R] | SetAside],
    quarantine_as: Callable[[T], tuple[str, Any]],
    prepare: Callable[[T], P] | None = None,
    refused: str = "",
    bar: Bar | None = None,
    status: Callable[[dict[str, int]], str] | None = None,
) -> dict[str, int]:
    """The loop of a stage that computes records in batches and resumes: what sampling, claim splitting and
    best-of-N scoring share. Returns counts of units: `done` (written now), `skipped` (done before: stored or
    quarantined), `quarantined` (set aside now).

    `units` go in fixed batches of `batch_size`, in order. A batch whose units are all done (not `pending`) is
    skipped whole. Otherwise every unit is prepared (`prepare`, e.g. its image loaded; a BadInput quarantines a
    pending unit and leaves the unit out), and the prepared units are computed together: `compute(batch, ready,
    inputs)` returns one answer per ready unit. Done units are computed too, so a batch recomputed after a crash
    is the batch an uninterrupted run computed (same padding, same seed, same floats); only pending units are
    written. A pending unit's answer is a BadInput (quarantined with `refused` before its message), or becomes one
    unit of records (`to_records`, written together: a crash keeps all of them or none), or a SetAside. Quarantined
    units are keyed and kept as `quarantine_as(unit)` = (key, row). The bar advances by the batch's units.
    """
    counts = {"done": 0, "skipped": 0, "quarantined": 0}

    def set_aside(unit: T, reason: str, row: Any = None) -> None:
        key, own = quarantine_as(unit)
        writer.quarantine(key, reason, own if row is None else row)
        counts["quarantined"] += 1

    for lo in range(0, len(units), batch_size):
        batch = list(units[lo : lo + batch_size])
        wanted = [pending(unit) for unit in batch]
        counts["skipped"] += wanted.count(False)
        if any(wanted):
            ready: list[tuple[T, bool]] = []
            inputs: list[P] = []
            for unit, want in zip(batch, wanted):
                try:
                    inputs.append(prepare(unit) if prepare is not None else unit)  # type: ignore[arg-type]
                    ready.append((unit, want))
                except BadInput as exc:
                    if want:
                        set_aside(unit, str(exc))
            answers = compute(batch, [u for u, _ in ready], inputs) if any(w for _, w in ready) else []
            for (unit, want), answer in zip(ready, answers):
                if not want:
                    continue
                if isinstance(answer, BadInput):
                    set_aside(unit, f"{refused}{answer}")
                    continue
                records = to_records(unit, answer)
                if isinstance(records, SetAside):
                    set_aside(unit, records.reason, records.row)
                else:
                    writer.add_unit(records)
                    counts["done"] += 1
        if bar is not None:
            bar.advance(len(batch), status=status(counts) if status is not None and any(wanted) else None)
    return counts
