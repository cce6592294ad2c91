"""Reading the files users bring for a benchmark, and the append-only JSONL logs that make long runs resumable.

The package never downloads a benchmark. When a file is missing, the error names the exact path it expected and
what the file is, so the user knows what to fetch and where to put it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class MissingBenchmarkFile(FileNotFoundError):
    """A benchmark file the user must provide is not where it was expected."""

    def __init__(self, path: Path, what: str) -> None:
        super().__init__(f"missing benchmark file: {path} ({what})")
        self.path = path


class BadBenchmarkFile(ValueError):
    """A benchmark or responses file exists but cannot be read as expected; the message names file and line."""


def require_file(path: Path, what: str) -> Path:
    """`path` if it is a file, else MissingBenchmarkFile naming it and `what` it should hold."""
    path = Path(path)
    if not path.is_file():
        raise MissingBenchmarkFile(path, what)
    return path


def load_json(path: Path, what: str) -> Any:
    """A whole JSON file (benchmark annotations, templates)."""
    require_file(path, what)
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BadBenchmarkFile(f"{path}: not valid JSON ({exc})") from None


def iter_jsonl(path: Path, required: Iterable[str] = ()) -> Iterator[dict[str, Any]]:
    """Objects of a JSONL file, blank lines skipped; a bad line or a missing `required` key names file and line."""
    required = tuple(required)
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadBenchmarkFile(f"{path}, line {number}: not valid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise BadBenchmarkFile(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
            missing = [key for key in required if key not in row]
            if missing:
                raise BadBenchmarkFile(f"{path}, line {number}: missing key(s) {', '.join(missing)}")
            yield row


def read_jsonl(path: Path, what: str, required: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Rows of a JSONL file that must exist (`what` names it in the error when it does not)."""
    require_file(path, what)
    return list(iter_jsonl(path, required))


class JsonlLog:
    """An append-only JSONL file of finished work items, keyed by one field: what a resumed run skips.

    A run killed mid-write can leave a last line without its newline; opening the log cuts that partial line off,
    so the item is redone once and never counted twice. Each `append` is flushed and fsynced before it returns:
    an item whose line is on disk is never recomputed (a paid judge call is not paid for again).
    """

    def __init__(self, path: Path, key: str) -> None:
        self.path = Path(path)
        self.key = key
        self._repair()
        self.rows: dict[Any, dict[str, Any]] = {}
        if self.path.exists():
            for row in self._lines():
                self.rows[row[key]] = row  # a later line for the same key replaces an earlier one

    def _repair(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def _lines(self) -> Iterator[dict[str, Any]]:
        return iter_jsonl(self.path, required=(self.key,))

    def __contains__(self, key: Any) -> bool:
        return key in self.rows

    def forget(self, key: Any) -> None:
        """Treat `key` as not done (a stale or unusable answer): the next append for it supersedes the old line."""
        self.rows.pop(key, None)

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Write finished items durably, then remember them."""
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        for row in rows:
            self.rows[row[self.key]] = row


TABLE_FORMATS = ".parquet, .arrow, .jsonl, .json, or a folder of them (a `datasets` save_to_disk or hub download)"


def _table_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for ext in ("*.parquet", "*.arrow") for p in path.rglob(ext))
    return files or sorted(p for ext in ("*.jsonl", "*.json") for p in path.rglob(ext)
                           if p.name not in ("dataset_info.json", "state.json", "dataset_dict.json"))


def _arrow_table(path: Path):
    import pyarrow as pa
    import pyarrow.ipc as ipc

    with pa.memory_map(str(path)) as source:
        try:
            return ipc.open_stream(source).read_all()  # what `datasets` writes
        except pa.ArrowInvalid:
            source.seek(0)
            return ipc.open_file(source).read_all()


def read_table(path: Path, what: str, columns: Iterable[str], optional: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Rows of a benchmark table with the given columns (and the `optional` ones it has), from Parquet, Arrow
    (a `datasets` export), JSONL or a JSON list, or a folder of such files read in name order. Only the columns
    asked for are read, so a table with embedded images can be scored without loading them. A missing column is
    an error naming it and the file."""
    path = Path(path)
    if not path.exists():
        raise MissingBenchmarkFile(path, f"{what} ({TABLE_FORMATS})")
    files = _table_files(path)
    if not files:
        raise MissingBenchmarkFile(path / "*.parquet", f"{what}: no table file in this folder ({TABLE_FORMATS})")
    columns, optional = tuple(columns), tuple(optional)
    rows: list[dict[str, Any]] = []
    for file in files:
        suffix = file.suffix.lower()
        if suffix in (".parquet", ".arrow"):
            import pyarrow.parquet as pq

            try:
                arrow = None if suffix == ".parquet" else _arrow_table(file)
                names = pq.read_schema(file).names if arrow is None else arrow.schema.names
            except Exception as exc:  # pyarrow's errors name neither the file nor what it was meant to be
                raise BadBenchmarkFile(f"{file}: not a readable {suffix[1:]} table ({exc})") from None
            _require_columns(file, names, columns)
            wanted = [c for c in columns + optional if c in names]
            table = pq.read_table(file, columns=wanted) if arrow is None else arrow.select(wanted)
            rows += table.to_pylist()
        else:
            data = load_json(file, what) if suffix == ".json" and _starts_with(file, "[") else list(iter_jsonl(file))
            if not isinstance(data, list):
                raise BadBenchmarkFile(f"{file}: expected a JSON list or JSON lines of rows")
            for number, row in enumerate(data, 1):
                if not isinstance(row, dict):
                    raise BadBenchmarkFile(f"{file}, row {number}: expected a JSON object")
                _require_columns(file, list(row), columns, f", row {number}")
            rows += [{c: row[c] for c in columns + optional if c in row} for row in data]
    return rows


def _starts_with(path: Path, char: str) -> bool:
    with open(path, encoding="utf-8") as f:
        return f.read(64).lstrip().startswith(char)


def _require_columns(file: Path, names: list[str], columns: tuple[str, ...], where: str = "") -> None:
    missing = [c for c in columns if c not in names]
    if missing:
        raise BadBenchmarkFile(f"{file}{where}: no column {', '.join(missing)} (columns: {', '.join(names)})")
