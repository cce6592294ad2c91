"""Prompts in: a user's images and questions, or the synthetic world's, as `Prompt` records in a store.

A feedback run starts from rows of (image, question). They arrive as JSON Lines, Parquet or a folder written by
`datasets.Dataset.save_to_disk`, with the image as a path, as encoded bytes, or as the {"bytes", "path"} dict a
`datasets` Image column stores. Every row is checked once, here, so a missing or undecodable image is quarantined
with a reason at ingest instead of failing a later stage hours into a run.

The world's prompts are written in the same row format (`write_world_prompts`), so the demo and a user's data go
through one ingest path; the scene rides along in the row's meta, which is what lets later code score a response
exactly (`scene_of`).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from rlaifv.files import atomic_write, write_bytes, write_text
from rlaifv.progress import progress
from rlaifv.records import BadInput, Prompt, reason_kind
from rlaifv.store import ShardedStore, ShardWriter
from rlaifv.world.language import instruction_for
from rlaifv.world.scenes import Scene, ScenePrior, sample_scenes, scene_from_dict, scene_to_dict

ROW_FIELDS = ("id", "image", "question")  # every other column of a row becomes the prompt's meta
DUPLICATE = "duplicate prompt id"
WORLD_MARKER = "world"  # the column `write_world_prompts` fills with each row's scene; `scene_of` reads it back
_BATCH = 256  # rows per Arrow batch: bounds memory on large Parquet / datasets sources


# -- reading rows --------------------------------------------------------------------------------------------------


class UnreadableRow(dict):
    """A line that is not a JSON object. It is yielded rather than raised, so it is quarantined like any bad row."""

    def __init__(self, reason: str, **content: Any) -> None:
        super().__init__(content)
        self.reason = reason


def read_prompt_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a `.jsonl` file, a `.parquet` file or a `datasets` save_to_disk folder, in file order.

    The source is checked before the first row is read, so a wrong path fails at once, not mid-run.
    """
    path = Path(path)
    if path.is_dir():
        return _dataset_rows(_load_dataset(path))
    if path.suffix not in (".jsonl", ".parquet"):
        raise ValueError(f"{path}: expected a .jsonl or .parquet file or a `datasets` save_to_disk folder")
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    return _jsonl_rows(path) if path.suffix == ".jsonl" else _parquet_rows(path)


def count_prompt_rows(path: Path) -> int:
    """How many rows `read_prompt_rows` yields (non-blank lines of a JSONL file), for a progress bar's total."""
    path = Path(path)
    if path.is_dir():
        return len(_load_dataset(path))
    if path.suffix == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def _jsonl_rows(path: Path) -> Iterator[dict[str, Any]]:
    # Decoded line by line: one bad byte or bad line costs one row, not the whole file.
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                yield UnreadableRow(f"unreadable row: line {lineno} is not JSON ({exc})", line=lineno)
                continue
            if not isinstance(row, dict):
                yield UnreadableRow(f"unreadable row: line {lineno} is not a JSON object", line=lineno)
                continue
            yield row


def _parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=_BATCH):
        yield from batch.to_pylist()


def _load_dataset(path: Path) -> Any:
    """A `datasets.Dataset` from a save_to_disk folder; `datasets` is optional, so it is imported only here."""
    try:
        import datasets
    except ImportError:
        raise ImportError(
            f"{path} is a folder; reading a `datasets` save_to_disk folder needs the datasets package: "
            "pip install datasets"
        ) from None
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        raise ValueError(f"{path} holds several splits ({', '.join(ds)}); pass one split's folder, e.g. "
                         f"{path / next(iter(ds))}")
    return ds


def _dataset_rows(ds: Any) -> Iterator[dict[str, Any]]:
    # Arrow format: the Image column comes back as its stored {"bytes", "path"} dict, never decoded to PIL.
    for table in ds.with_format("arrow").iter(batch_size=_BATCH):
        yield from table.to_pylist()


def source_folder(path: Path) -> Path:
    """Where relative image paths of a source resolve: the folder that holds the file or the dataset folder."""
    return Path(os.path.abspath(path)).parent


# -- one row -> one Prompt -----------------------------------------------------------------------------------------


def prompt_from_row(row: Mapping[str, Any], source: str, base_dir: Path) -> Prompt:
    """A checked Prompt from one row, or BadInput saying what is wrong with the row.

    Reasons read "<kind>: <detail>" so a summary can count them by kind. The image is decoded once here, so every
    stored prompt is known to open.
    """
    if isinstance(row, UnreadableRow):
        raise BadInput(row.reason)
    question = _question_of(row)
    image, data = _image_of(row, Path(base_dir))
    _decode(data, image or "inline image")
    sha = hashlib.sha256(data).hexdigest()
    return Prompt(
        prompt_id=row_id(row) or content_id(sha, question),
        image=image,
        image_bytes=None if image else data,
        image_sha256=sha,
        question=question,
        source=source,
        meta={str(k): _jsonable(v) for k, v in row.items() if k not in ROW_FIELDS},
    )


def row_id(row: Mapping[str, Any]) -> str | None:
    """The row's own id as text; None when it has none (missing, null or empty)."""
    value = row.get("id")
    return None if value is None or value == "" else str(value)


def content_id(image_sha256: str, question: str) -> str:
    """A stable id for a row without one: the same image and question always get the same id."""
    return hashlib.sha256(f"{image_sha256}\n{question}".encode()).hexdigest()[:16]


def _question_of(row: Mapping[str, Any]) -> str:
    if "question" not in row or row["question"] is None:
        raise BadInput("empty question: the row has no 'question'")
    question = row["question"]
    if not isinstance(question, str):
        raise BadInput(f"question is not text: got {type(question).__name__}")
    if not question.strip():
        raise BadInput("empty question")
    return question


def _image_of(row: Mapping[str, Any], base_dir: Path) -> tuple[str, bytes]:
    """(absolute path, file bytes) for a path image; ("", bytes) for an inline one."""
    value = row.get("image")
    if isinstance(value, Mapping):  # a `datasets` Image column: bytes when embedded, else a path
        value = value.get("bytes") if value.get("bytes") is not None else value.get("path")
    if value is None:
        raise BadInput("no image: the row has no 'image'")
    if isinstance(value, bytes | bytearray | memoryview):
        return "", bytes(value)
    if isinstance(value, str | os.PathLike):
        path = Path(value).expanduser()
        path = Path(os.path.abspath(path if path.is_absolute() else base_dir / path))
        return str(path), read_image_file(path)
    raise BadInput(f"unsupported image type: {type(value).__name__} (expected a path, bytes or a "
                   "{'bytes', 'path'} dict)")


def read_image_file(path: Path) -> bytes:
    """The encoded bytes of an image file, or BadInput naming the path."""
    if not path.exists():
        raise BadInput(f"image file not found: {path}")
    if path.is_dir():
        raise BadInput(f"image path is a folder: {path}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BadInput(f"image file unreadable: {path} ({exc.strerror})") from None


def _decode(data: bytes, what: str) -> Image.Image:
    """The decoded image; BadInput for anything PIL cannot fully read.

    `verify()` catches broken checksums, and `load()` catches truncated data that `verify()` lets through. An
    image of zero pixels never opens (PIL refuses a zero width or height as unidentified), so every image returned
    has pixels for the processor to resize. Decoders raise many exception types on hostile input, hence the broad
    catch, kept to these few calls.
    """
    try:
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError:  # PIL's text names an in-memory buffer, not the file
        raise BadInput(f"undecodable image: {what} (no image format recognises it: not an image, or one "
                       "of zero pixels)") from None
    except Exception as exc:  # any decoder failure means this one image is bad, not that the run is
        raise BadInput(f"undecodable image: {what} ({type(exc).__name__}: {exc})") from None
    return image


def _jsonable(value: Any) -> Any:
    """Meta that survives JSON: bytes become a short "<N bytes>" note, unknown types their text."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if isinstance(value, np.generic | np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)  # dates, decimals, ...: readable rather than lost


# -- ingest ----------------------------------------------------------------------------------------------------------


@dataclass
class _Ingest:
    """One pass over a source's rows into a store.

    The first row (in file order) that carries an id owns it; a later row with the same id is quarantined under
    "<id>@row-<index>". File order is fixed, so a rerun after a crash assigns every key the same way and each key
    ends up in the store exactly once.
    """

    writer: ShardWriter[Prompt]
    source: str
    base_dir: Path
    seen: set[str] = field(default_factory=set)
    done: int = 0
    skipped: int = 0
    quarantined: Counter[str] = field(default_factory=Counter)

    def row(self, index: int, row: Mapping[str, Any]) -> None:
        rid = row_id(row)
        if rid is not None:
            self._row_with_id(index, row, rid)
        else:
            self._row_without_id(index, row)

    def _row_with_id(self, index: int, row: Mapping[str, Any], rid: str) -> None:
        # Checked before the image is read, so a resumed run skips finished rows cheaply.
        if self._duplicate(rid, index, row):
            return
        if rid in self.writer:
            self.skipped += 1
            return
        prompt = self._build(rid, row)
        if prompt is not None:
            self._add(prompt)

    def _row_without_id(self, index: int, row: Mapping[str, Any]) -> None:
        # Its id comes from the image's content, so the image is read even when the row turns out to be done.
        key = f"row-{index}"
        if key in self.writer:
            self.skipped += 1
            return
        prompt = self._build(key, row)
        if prompt is None or self._duplicate(prompt.prompt_id, index, row):
            return
        if prompt.key in self.writer:
            self.skipped += 1
            return
        self._add(prompt)

    def _build(self, key: str, row: Mapping[str, Any]) -> Prompt | None:
        try:
            return prompt_from_row(row, self.source, self.base_dir)
        except BadInput as exc:
            self._quarantine(key, str(exc), row)
            return None

    def _duplicate(self, pid: str, index: int, row: Mapping[str, Any]) -> bool:
        if pid not in self.seen:
            self.seen.add(pid)
            return False
        self._quarantine(f"{pid}@row-{index}", DUPLICATE, row)
        return True

    def _add(self, prompt: Prompt) -> None:
        self.writer.add(prompt)
        self.done += 1

    def _quarantine(self, key: str, reason: str, row: Mapping[str, Any]) -> None:
        if key in self.writer:  # quarantined by an earlier run
            self.skipped += 1
            return
        self.writer.quarantine(key, reason, _jsonable(row))  # image bytes as a size note, not a second copy
        self.quarantined[reason_kind(reason)] += 1

    def counts(self) -> dict[str, Any]:
        return {"done": self.done, "skipped": self.skipped, "quarantined": dict(self.quarantined)}


def ingest_prompts(path: Path, store: ShardedStore[Prompt], rows: Collection[int] | None = None) -> dict[str, Any]:
    """Check every row of a prompt source and write it to the store as a Prompt, or quarantine it with a reason.

    Resumable: keys already in the store (stored or quarantined) are skipped. Returns {"done": rows stored now,
    "skipped": rows done by an earlier run, "quarantined": {reason kind: rows quarantined now}}; each quarantine
    record keeps the full reason. Keys are the row's id, or "row-<index>" for a bad row without one.

    `rows`: only the rows at these indices (in file order, counted as `count_prompt_rows` counts them) are ingested,
    e.g. one round's slice of a larger file; every key is what a whole-file ingest would give that row.
    """
    path = Path(path)
    source = read_prompt_rows(path)
    wanted = None if rows is None else frozenset(rows)
    config: dict[str, Any] = {"source": str(path)}
    if wanted is not None:
        config["rows"] = hashlib.sha256(json.dumps(sorted(wanted)).encode()).hexdigest()[:16]
    store.write_config(config)
    total = count_prompt_rows(path) if wanted is None else len(wanted)
    with progress("reading prompts", total) as bar, store.writer() as writer:
        run = _Ingest(writer, str(path), source_folder(path))
        for index, row in enumerate(source):
            if wanted is not None and index not in wanted:
                continue
            run.row(index, row)
            bar.advance(1)
    return run.counts()


# -- which prompts these are ---------------------------------------------------------------------------------------


def is_world_prompts(path: Path) -> bool:
    """Whether a prompt source was written by `rlaifv world prompts` (`write_world_prompts`): its first row carries a
    world scene under WORLD_MARKER. Cheap: reads one row (a Parquet file: the marker column's first row group), and
    never an image. A source that cannot be read is not world prompts; reading it fails later with the reason."""
    path = Path(path)
    try:
        if path.is_dir():
            return _first_marker(_dataset_rows(_load_dataset(path)))
        if path.suffix == ".parquet":
            parquet = pq.ParquetFile(path)
            if WORLD_MARKER not in parquet.schema_arrow.names or parquet.metadata.num_row_groups == 0:
                return False
            column = parquet.read_row_group(0, columns=[WORLD_MARKER]).column(0)
            return len(column) > 0 and _is_scene(column[0].as_py())
        if path.suffix == ".jsonl":
            return _first_marker(_jsonl_rows(path))
    except (OSError, ValueError, ImportError, pa.ArrowException):
        return False
    return False


def _first_marker(rows: Iterator[dict[str, Any]]) -> bool:
    row = next(iter(rows), None)
    return row is not None and not isinstance(row, UnreadableRow) and _is_scene(row.get(WORLD_MARKER))


def _is_scene(value: Any) -> bool:
    if not isinstance(value, Mapping):
        return False
    try:
        scene_from_dict(value)
    except (KeyError, TypeError, ValueError):
        return False
    return True


def stored_prompts_are_world(store: ShardedStore[Prompt]) -> bool | None:
    """Whether every prompt in a store is a world scene; None for an empty store."""
    seen = False
    for prompt in store.read():
        seen = True
        if prompt.meta.get(WORLD_MARKER) is None:
            return False
    return True if seen else None


# -- using a Prompt ------------------------------------------------------------------------------------------------


def load_image(prompt: Prompt) -> Image.Image:
    """The prompt's image as RGB; BadInput when the file is gone, undecodable, or no longer the ingested image.

    The sha256 check matters for path prompts: a file replaced after ingest would otherwise pair new pixels with
    responses and verdicts computed on the old ones.
    """
    if prompt.image_bytes is not None:
        data, what = prompt.image_bytes, f"inline image of prompt {prompt.prompt_id}"
    else:
        data, what = read_image_file(Path(prompt.image)), prompt.image
    sha = hashlib.sha256(data).hexdigest()
    if sha != prompt.image_sha256:
        raise BadInput(f"image changed since ingest: {what} (sha256 {sha[:12]}, ingested as "
                       f"{prompt.image_sha256[:12]}); ingest the prompts again into a new store")
    return _decode(data, what).convert("RGB")


def scene_of(prompt: Prompt) -> Scene | None:
    """The world scene behind a prompt (exact ground truth), or None for a prompt from outside the world."""
    world = prompt.meta.get(WORLD_MARKER)
    if world is None:
        return None
    try:
        return scene_from_dict(world)
    except (KeyError, TypeError, ValueError) as exc:
        raise BadInput(f"malformed world scene: prompt {prompt.prompt_id} ({type(exc).__name__}: {exc})") from None


# -- the world's prompts -------------------------------------------------------------------------------------------


def write_world_prompts(seed: int, split: str, n: int, out: Path, prior: ScenePrior | None = None) -> Path:
    """The first n scenes of a split as a prompt file a user could have written; returns `out`.

    `.jsonl`: PNG files in "<out stem>_images/" beside it, referenced by relative path. `.parquet`: PNG bytes
    inline. Columns: id (the scene id), image, question (`instruction_for(i)`, as the world's evaluation asks),
    world (the scene as a dict, see `scene_of`). Every file is written atomically.
    """
    from rlaifv.world.render import render

    out = Path(out)
    if out.suffix not in (".jsonl", ".parquet"):
        raise ValueError(f"{out}: world prompts are written as .jsonl or .parquet")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out.parent.mkdir(parents=True, exist_ok=True)
    images = out.parent / f"{out.stem}_images"
    rows = []
    with progress("rendering scenes", n) as bar:
        for i, scene in enumerate(sample_scenes(seed, split, n, prior)):
            png = _png_bytes(render(scene))
            if out.suffix == ".jsonl":
                images.mkdir(exist_ok=True)
                write_bytes(images / f"{scene.scene_id}.png", png)
                image: str | bytes = f"{images.name}/{scene.scene_id}.png"
            else:
                image = png
            rows.append({"id": scene.scene_id, "image": image, "question": instruction_for(i),
                         WORLD_MARKER: scene_to_dict(scene)})
            bar.advance(1)
    if out.suffix == ".jsonl":
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        write_text(out, text)
    else:
        table = pa.Table.from_pylist(rows)
        atomic_write(out, lambda tmp: pq.write_table(table, tmp))
    return out


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
