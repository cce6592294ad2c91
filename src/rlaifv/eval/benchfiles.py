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
