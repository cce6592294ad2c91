"""Preference pairs in: what DPO trains on and the implicit reward is measured on, from whatever the project writes
or a user brings.

Three sources are read, and the two exports of `rlaifv export` round-trip through them:

- an rlaifv pair store (`OUT/preferences/pairs`, or the collect folder `OUT` itself); the images come from the
  collect folder's prompt store when there is one (sha256-checked), else from the paths in the pairs;
- TRL's vision preference format: `images` (one image) or `image`, `prompt` / `chosen` / `rejected` either as
  conversational messages (rendered with the model's chat template) or as plain text (used verbatim, as TRL does);
- the RLAIF-V-Dataset columns: `image`, `question`, `chosen`, `rejected` (other columns are ignored);

as a Parquet or JSONL file, or a folder written by `datasets.Dataset.save_to_disk`. Rows are read by the same code
that reads prompt files (`rlaifv.prompts`), so images may be paths (relative to the file), bytes or the
{"bytes", "path"} dicts of a `datasets` Image column.

A row that cannot train -- no or undecodable image, empty or identical responses, an unknown layout, a duplicate --
is returned with its reason, so the caller quarantines it instead of crashing or silently dropping it. Checks that
need the model's tokenizer (a pair longer than the context) happen when the pair is encoded (`logps.encode`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlaifv.progress import progress
from rlaifv.prompts import count_prompt_rows, prompt_from_row, read_prompt_rows, source_folder
from rlaifv.records import BadInput, Pair, Prompt
from rlaifv.store import ShardedStore

PREFERENCES = "preferences"  # a collect folder's pairs stage owns OUT/preferences/{scores,pairs}
IMAGE_COLUMNS = ("image", "images")  # left out of a quarantined row's copy: the reason says what was wrong


@dataclass(frozen=True)
class PreferenceExample:
    """One trainable pair: an image-grounded prompt, a preferred and a dispreferred response."""

    key: str  # Pair.key_of(prompt id, chosen, rejected): stable across runs, keys the reference store
    prompt: Prompt  # the image (path or bytes, sha256-checked when loaded) and the question text
    chosen: str  # preferred response (assistant text; final text when `formatted`)
    rejected: str  # dispreferred response
    messages: list[dict[str, Any]] | None = None  # prompt turns of a conversational TRL row; None = one user turn
    formatted: bool = False  # TRL plain-text row: prompt (`prompt.question`) and responses are final text


@dataclass
class LoadedPairs:
    """What a source holds: the examples that can train and the rows that cannot, with their reasons."""

    source: Path
    examples: list[PreferenceExample] = field(default_factory=list)
    bad: list[tuple[str, str, Any]] = field(default_factory=list)  # (quarantine key, reason, offending row)


def load_pairs(source: Path) -> LoadedPairs:
    """Every pair of a pair store, a collect folder, a Parquet / JSONL file or a `datasets` folder, in source order.

    Keys are deterministic (source order and content only), so a rerun finds the same keys and a resumed reference
    pass skips exactly what is done.
    """
    source = Path(source)
    store_root = pair_store_root(source)
    loaded = LoadedPairs(source)
    if store_root is not None:
        rows, total = _store_rows(store_root), len(ShardedStore(store_root, Pair))
    else:
        rows, total = _file_rows(source), count_prompt_rows(source)
    seen: set[str] = set()
    with progress("reading pairs", total) as bar:
        for index, (row_key, raw, build) in enumerate(rows):
            bar.advance(1)
            try:
                example = build()
            except BadInput as exc:
                loaded.bad.append((row_key or f"row-{index}", str(exc), {"row": index, **raw}))
                continue
            if example.key in seen:
                reason = "duplicate pair: same prompt and responses as an earlier row"
                loaded.bad.append((f"{example.key}@row-{index}", reason, {"row": index, **raw}))
                continue
            seen.add(example.key)
            loaded.examples.append(example)
    return loaded


def pair_store(out: Path) -> ShardedStore[Pair]:
    """The pair store of a collect folder."""
    return ShardedStore(out / PREFERENCES / "pairs", Pair)


def pair_store_root(source: Path) -> Path | None:
    """The pair store a path names (the store itself or a collect folder holding one), or None for a data file."""
    for root in (source, source / PREFERENCES / "pairs"):
        if (root / "shards").is_dir():
            return root
    return None


# -- rlaifv pair store ------------------------------------------------------------------------------------------------


def _store_rows(root: Path) -> Iterator[tuple[str | None, dict[str, Any], Any]]:
    """(key, row, builder) per stored pair; builders raise BadInput for pairs that cannot train."""
    prompts = _prompt_store_of(root)
    by_id = {p.prompt_id: p for p in prompts.read()} if prompts is not None else None
    for pair in ShardedStore(root, Pair).read():
        yield pair.key, pair.to_row(), (lambda pair=pair: _example_of_pair(pair, by_id))


def _prompt_store_of(root: Path) -> ShardedStore[Prompt] | None:
    """The prompt store of the collect folder that holds this pair store (OUT/preferences/pairs -> OUT/prompts)."""
    prompts = root.parent.parent / "prompts"
    return ShardedStore(prompts, Prompt) if root.parent.name == PREFERENCES and (prompts / "shards").is_dir() else None


def _example_of_pair(pair: Pair, prompts: dict[str, Prompt] | None) -> PreferenceExample:
    if prompts is not None:
        if pair.prompt_id not in prompts:
            raise BadInput(f"prompt not found: {pair.prompt_id} is not in the collect folder's prompt store")
        prompt = prompts[pair.prompt_id]
    else:
        row = {"id": pair.prompt_id, "image": pair.image or None, "question": pair.question}
        prompt = prompt_from_row(row, "pairs", Path.cwd())
    _check_responses(pair.chosen, pair.rejected)
    return PreferenceExample(pair.key, prompt, pair.chosen, pair.rejected)


# -- TRL and RLAIF-V-Dataset rows -------------------------------------------------------------------------------------


def _file_rows(path: Path) -> Iterator[tuple[str | None, dict[str, Any], Any]]:
    base = source_folder(path)
    for row in read_prompt_rows(path):
        text = {k: v for k, v in row.items() if k not in IMAGE_COLUMNS}
        yield None, text, (lambda row=row: example_from_row(row, str(path), base))


def example_from_row(row: Mapping[str, Any], source: str, base_dir: Path) -> PreferenceExample:
    """A checked example from one TRL or RLAIF-V-Dataset row; BadInput says what is wrong with the row."""
    if getattr(row, "reason", None):  # a line of a JSONL file that is not a JSON object
        raise BadInput(row.reason)  # type: ignore[attr-defined]
    if not {"chosen", "rejected"} <= row.keys() or not ({"prompt", "question"} & row.keys()):
        raise BadInput("unknown row layout: expected prompt/chosen/rejected (TRL) or question/chosen/rejected "
                       f"(RLAIF-V-Dataset) columns, got {sorted(row)}")
    image = _one_image(row)
    if "prompt" in row:
        question, messages, formatted = _trl_prompt(row["prompt"])
        chosen, rejected = _trl_response(row["chosen"], "chosen"), _trl_response(row["rejected"], "rejected")
    else:
        question, messages, formatted = row["question"], None, False
        chosen, rejected = row["chosen"], row["rejected"]
    _check_responses(chosen, rejected)
    # The prompt id hashes the image bytes and the prompt, so the same content always gets the same key.
    prompt = prompt_from_row({"image": image, "question": question}, source, base_dir)
    key = Pair.key_of({"prompt_id": prompt.prompt_id, "chosen": chosen, "rejected": rejected})
    return PreferenceExample(key, prompt, chosen, rejected, messages, formatted)


def _one_image(row: Mapping[str, Any]) -> Any:
    images = row.get("images")
    if images is None:
        return row.get("image")  # None: prompt_from_row reports "no image"
    if not isinstance(images, list | tuple) or len(images) != 1:
        n = len(images) if isinstance(images, list | tuple) else type(images).__name__
        raise BadInput(f"unsupported image count: {n} images, one image per pair is supported")
    return images[0]


def _trl_prompt(prompt: Any) -> tuple[str, list[dict[str, Any]] | None, bool]:
    """(question text, prompt turns or None, formatted) of a TRL prompt.

    One user turn of an image and text -- what `export_trl` writes -- becomes a plain question, so a pair reads the
    same from every format; other conversations keep their turns. A string is final text (TRL's standard format).
    """
    if isinstance(prompt, str):
        return prompt, None, True
    if not isinstance(prompt, list) or not all(isinstance(m, Mapping) for m in prompt):
        raise BadInput(f"unreadable prompt: expected text or a list of messages, got {type(prompt).__name__}")
    messages = [_clean_message(m) for m in prompt]
    parts = [p for m in messages if isinstance(m["content"], list) for p in m["content"]]
    n_images = sum(p["type"] == "image" for p in parts)
    if n_images != 1:
        raise BadInput(f"unsupported image count: the prompt has {n_images} image parts, one is supported")
    text = "\n".join(p["text"] for p in parts if p["type"] == "text")
    if len(messages) == 1 and messages[0]["role"] == "user":
        return text, None, False
    return "\n".join(str(m["role"]) + ": " + _text_of(m) for m in messages), messages, False


def _trl_response(value: Any, name: str) -> str:
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], Mapping):
        raise BadInput(f"unreadable {name}: expected text or one assistant message")
    message = _clean_message(value[0])
    if message["role"] != "assistant":
        raise BadInput(f"unreadable {name}: the message's role is {message['role']!r}, not 'assistant'")
    return _text_of(message)


def _clean_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """A message as chat templates expect it: Arrow's null `text` on image parts dropped."""
    content = message.get("content")
    if isinstance(content, list):
        content = [{k: v for k, v in dict(part).items() if v is not None} for part in content]
    return {"role": message.get("role"), "content": content}


def _text_of(message: dict[str, Any]) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content or [] if p.get("type") == "text")


def _check_responses(chosen: Any, rejected: Any) -> None:
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(text, str):
            raise BadInput(f"unreadable {name}: expected text, got {type(text).__name__}")
        if not text.strip():
            raise BadInput(f"empty response: {name} is empty")
    if chosen == rejected:
        raise BadInput("identical responses: chosen equals rejected, nothing to learn")
