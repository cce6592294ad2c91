"""A pair store as Parquet for other tools: TRL's VLM preference format and the RLAIF-V-Dataset columns, each
readable by `datasets` with its images decoded (`rlaifv export`)."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rlaifv.files import atomic_write
from rlaifv.records import Pair, Prompt
from rlaifv.store import ShardedStore

EXPORT_BATCH_ROWS = 256  # rows per Parquet write: bounds the images held in memory during an export


# How ``datasets`` stores an image: encoded bytes plus an optional path. The schema metadata below tells
# ``datasets.load_dataset("parquet", ...)`` to decode such columns as images. "Sequence" is the list type name that
# datasets 3.x and 4.x+ both read.
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_CONTENT = pa.list_(pa.struct([("type", pa.string()), ("text", pa.string())]))
MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", _CONTENT)]))


def _hf_schema(fields: list[tuple[str, pa.DataType]], features: dict[str, Any]) -> pa.Schema:
    meta = {"huggingface": json.dumps({"info": {"features": features}})}
    return pa.schema(fields, metadata=meta)


TRL_SCHEMA = _hf_schema(
    [
        ("images", pa.list_(IMAGE_TYPE)),
        ("prompt", MESSAGES_TYPE),
        ("chosen", MESSAGES_TYPE),
        ("rejected", MESSAGES_TYPE),
    ],
    {"images": {"_type": "Sequence", "feature": {"_type": "Image"}}},
)
RLAIFV_SCHEMA = _hf_schema(
    [
        ("ds_name", pa.string()),
        ("image", IMAGE_TYPE),
        ("question", pa.string()),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("origin_dataset", pa.string()),
        ("origin_split", pa.string()),
        ("idx", pa.string()),
        ("image_path", pa.string()),
    ],
    {"image": {"_type": "Image"}},
)
DS_NAME = "rlaifv"
RowFn = Callable[[Pair, Prompt, dict[str, Any]], dict[str, Any]]


def export_trl(pairs: ShardedStore[Pair], prompts: ShardedStore[Prompt], path: Path) -> Path:
    """Write the pairs as a TRL vision preference dataset (Parquet): ``images``, ``prompt``, ``chosen``, ``rejected``.

    The conversational format TRL recommends for VLMs (each model places image tokens its own way): ``prompt`` is
    one user turn ``[{"type": "image"}, {"type": "text", "text": question}]``, ``chosen`` / ``rejected`` one
    assistant turn each, ``images`` a one-image list. Load with
    ``datasets.load_dataset("parquet", data_files=str(path), split="train")``; images decode to PIL images.
    Rows follow the prompt store's order (pairs of a prompt in pair-store order).
    """
    return _export(pairs, prompts, Path(path), TRL_SCHEMA, _trl_row)


def export_rlaifv_dataset(pairs: ShardedStore[Pair], prompts: ShardedStore[Prompt], path: Path) -> Path:
    """Write the pairs with the columns of openbmb/RLAIF-V-Dataset (Parquet, loadable with ``datasets``).

    How the columns are filled:

    - ``ds_name``: ``"rlaifv"`` for every row (the data engine that made the pair);
    - ``image``: the encoded image (``{"bytes", "path"}``); ``image_path``: ``Prompt.image`` ("" when the image
      lives only in the prompt store as bytes);
    - ``origin_dataset``: ``Prompt.source`` up to its first "/" (``"coco/train"`` -> ``"coco"``);
    - ``origin_split``: JSON text, as in the release, of ``{"split": the rest of Prompt.source, "type":
      Prompt.meta["type"] or None, "model": the sampling policy, "round": Pair.round}``;
    - ``idx``: the pair's key (``prompt_id/hash``), so a row traces back to the pair store.
    """
    return _export(pairs, prompts, Path(path), RLAIFV_SCHEMA, _rlaifv_row)


def _trl_row(pair: Pair, prompt: Prompt, image: dict[str, Any]) -> dict[str, Any]:
    def turn(role: str, content: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"role": role, "content": content}]

    def text(value: str) -> dict[str, Any]:
        return {"type": "text", "text": value}

    return {
        "images": [image],
        "prompt": turn("user", [{"type": "image", "text": None}, text(pair.question)]),
        "chosen": turn("assistant", [text(pair.chosen)]),
        "rejected": turn("assistant", [text(pair.rejected)]),
    }


def _rlaifv_row(pair: Pair, prompt: Prompt, image: dict[str, Any]) -> dict[str, Any]:
    dataset, _, split = prompt.source.partition("/")
    origin = {"split": split, "type": prompt.meta.get("type"), "model": pair.meta.get("policy"), "round": pair.round}
    return {
        "ds_name": DS_NAME,
        "image": image,
        "question": pair.question,
        "chosen": pair.chosen,
        "rejected": pair.rejected,
        "origin_dataset": dataset,
        "origin_split": json.dumps(origin, sort_keys=True),
        "idx": pair.key,
        "image_path": prompt.image,
    }


def _export(
    pairs: ShardedStore[Pair], prompts: ShardedStore[Prompt], path: Path, schema: pa.Schema, row_of: RowFn
) -> Path:
    """Stream the export into a temp file beside ``path`` in batches, then rename it into place."""
    by_prompt: dict[str, list[Pair]] = defaultdict(list)
    for pair in pairs.read():
        by_prompt[pair.prompt_id].append(pair)
    path.parent.mkdir(parents=True, exist_ok=True)

    def stream(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, schema) as writer:
            for rows in _batched(_export_rows(by_prompt, prompts, row_of), EXPORT_BATCH_ROWS):
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))

    atomic_write(path, stream)
    return path


def _export_rows(
    by_prompt: dict[str, list[Pair]], prompts: ShardedStore[Prompt], row_of: RowFn
) -> Iterator[dict[str, Any]]:
    """Rows in prompt-store order; each image is read once per prompt, however many pairs share it."""
    remaining = set(by_prompt)
    for prompt in prompts.read():
        if prompt.prompt_id not in remaining:
            continue
        remaining.discard(prompt.prompt_id)
        image = {"bytes": image_bytes(prompt), "path": prompt.image or None}
        for pair in by_prompt[prompt.prompt_id]:
            yield row_of(pair, prompt, image)
    if remaining:
        raise ValueError(f"pairs for prompts missing from {prompts!r}: {sorted(remaining)[:5]}")


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def image_bytes(prompt: Prompt) -> bytes:
    """The prompt's encoded image: ``image_bytes`` if stored, else the file at ``image`` (relative to the cwd).

    Checked against ``image_sha256`` when one is recorded, so an image file changed since sampling fails loudly
    instead of exporting pairs about a different picture.
    """
    data = prompt.image_bytes if prompt.image_bytes is not None else Path(prompt.image).read_bytes()
    if prompt.image_sha256 and hashlib.sha256(data).hexdigest() != prompt.image_sha256:
        raise ValueError(f"prompt {prompt.prompt_id}: image does not match its sha256 ({prompt.image or 'bytes'})")
    return data
