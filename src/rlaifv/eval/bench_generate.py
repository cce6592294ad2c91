"""`rlaifv eval generate`: a policy's answers to a benchmark's prompts, as the responses file its scorer reads.

    objhal: --data a JSONL of {"image_id", "question", "image"} rows (image: a path, relative to --images or to
            the file's folder, or base64 bytes)            -> rows {"id", "image_id", "question", "response"}
    amber:  --data AMBER's root folder (data/query/*.json), --images its images (default DATA/image)
                                                           -> rows {"id", "query", "response"}
    mmhal:  --data mmhal-bench_answer_template.json, --images a folder with the template's images
                                                           -> rows {"index", "question", "response"}
    refomb: --data RefoMB's prompts JSONL (id, question, image_url), --images the downloaded images
                                                           -> rows {"id", "question", "response"}
    mmstar: --data MMStar's table (Parquet / `datasets` export; images inside)
                                                           -> rows {"index", "category", "response"}
    pope:   --data a POPE question file or a folder of them, --images COCO val2014
                                                           -> rows {"id", "split", "question_id", "question",
                                                                    "response"}

Every row also carries `image`, the path of the image the policy saw (what `rlaifv eval human export` shows).

Decoding follows the paper's evaluation: beam search with 3 beams, no sampling (`BenchGenerateConfig`). Rows are
appended as each batch finishes (flushed and fsynced), so a rerun continues where a crash stopped and never writes
an item twice. The config that wrote them is kept beside the file (`<out>.config.yaml`); a rerun with another one is
refused (store.bind_config), since the file would then mix two settings' answers.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from rlaifv.config import HFEngineConfig, StrictModel
from rlaifv.eval import mmstar, pope
from rlaifv.eval.benchfiles import BadBenchmarkFile, JsonlLog, MissingBenchmarkFile, load_json, read_jsonl, read_table
from rlaifv.eval.mmhal import load_template
from rlaifv.progress import log, progress
from rlaifv.store import bind_config

Benchmark = Literal["objhal", "amber", "mmhal", "refomb", "mmstar", "pope"]
AMBER_SPLITS = {"all": "query_all.json", "generative": "query_generative.json",
                "discriminative": "query_discriminative.json",
                "existence": "query_discriminative-existence.json",
                "attribute": "query_discriminative-attribute.json",
                "relation": "query_discriminative-relation.json"}


class BenchGenerateConfig(StrictModel):
    """Decoding for benchmark answers; the defaults are the paper's evaluation setting."""

    policy: HFEngineConfig = Field(default_factory=HFEngineConfig,
                                   description="the VLM that answers, loaded here (path required)")
    num_beams: int = Field(3, ge=1, description="beam search width (paper: 3); 1 = greedy or sampling")
    do_sample: bool = Field(False, description="sample instead of searching (paper: no)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature, used only with do_sample")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus mass, used only with do_sample")
    max_new_tokens: int = Field(512, ge=1, description="cap on an answer's length")
    batch_size: int = Field(4, ge=1, description="prompts decoded together (each with num_beams beams)")
    seed: int = Field(0, description="torch seed before each batch (matters only with do_sample)")
    amber_yes_no: bool = Field(True, description="AMBER yes/no questions: store 'Yes'/'No' when the answer's first "
                                                 "word is yes/no (raw text kept in raw_response); AMBER's scorer "
                                                 "counts anything but an exact 'Yes'/'No' as wrong")


@dataclass
class Item:
    """One prompt of a benchmark and what its output row carries besides the response."""

    key: Any
    image: Callable[[], Any]  # loads the PIL image
    image_ref: str  # path or "inline", for error messages
    question: str
    row: dict[str, Any] = field(default_factory=dict)
    yes_no: bool = False  # an AMBER discriminative question


def _file_image(path: Path) -> Callable[[], Any]:
    def load():
        from PIL import Image

        with Image.open(path) as im:
            return im.convert("RGB")

    return load


def _bytes_image(data: bytes) -> Callable[[], Any]:
    def load():
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")

    return load


def _image_source(value: str, base: Path) -> tuple[Callable[[], Any], str]:
    """A path (absolute or under `base`) when such a file exists or the value looks like one, else base64 bytes."""
    path = Path(value) if Path(value).is_absolute() else base / value
    if path.is_file() or len(value) < 256:
        if not path.is_file():
            raise MissingBenchmarkFile(path, "benchmark image")
        return _file_image(path), str(path)
    try:
        return _bytes_image(base64.b64decode(value.split(",", 1)[-1], validate=False)), "inline"
    except (binascii.Error, ValueError):
        raise BadBenchmarkFile(f"image is neither a file under {base} nor base64: {value[:40]!r}...") from None


def objhal_items(data: Path, images: Path | None) -> list[Item]:
    rows = read_jsonl(data, "Object HalBench prompts: JSONL rows with image_id, question, image",
                      required=("image_id", "question", "image"))
    base = images or Path(data).parent
    items = []
    for i, row in enumerate(rows):
        load, ref = _image_source(str(row["image"]), base)
        key = row.get("id", i)
        items.append(Item(key, load, ref, str(row["question"]),
                          {"id": key, "image_id": row["image_id"], "question": row["question"]}))
    return items


def amber_items(data: Path, images: Path | None, split: str) -> list[Item]:
    if split not in AMBER_SPLITS:
        raise ValueError(f"AMBER split {split!r} is not one of {', '.join(AMBER_SPLITS)}")
    queries = load_json(Path(data) / "data" / "query" / AMBER_SPLITS[split], f"AMBER queries ({split})")
    base = images or Path(data) / "image"
    items = []
    for q in queries:
        path = base / q["image"]
        if not path.is_file():
            raise MissingBenchmarkFile(path, "AMBER image (AMBER_<n>.jpg, downloaded separately)")
        qid = int(q["id"])
        items.append(Item(qid, _file_image(path), str(path), q["query"], {"id": qid, "query": q["query"]},
                          yes_no=q["query"] != "Describe this image."))
    return items


def mmhal_image(images: Path, question: dict[str, Any]) -> Path:
    """A template image in `images`: the file name of its image_src URL, or <image_id>.jpg / .png."""
    names = [str(question.get("image_src", "")).rsplit("/", 1)[-1]]
    names += [f"{question.get('image_id')}{ext}" for ext in (".jpg", ".jpeg", ".png")]
    for name in names:
        if name and (images / name).is_file():
            return images / name
    raise MissingBenchmarkFile(images / names[0], f"MMHal-Bench image (also tried {', '.join(names[1:])})")


def mmhal_items(data: Path, images: Path | None) -> list[Item]:
    template = load_template(data)
    base = images or Path(data).parent / "images"
    items = []
    for i, q in enumerate(template):
        path = mmhal_image(base, q)
        items.append(Item(i, _file_image(path), str(path), q["question"], {"index": i, "question": q["question"]}))
    return items


def refomb_items(data: Path, images: Path | None) -> list[Item]:
    """RefoMB prompts (JSONL rows with id, question and image_url or image): the image is `image` (a path under
    `images`, default the file's folder) or the file named like the end of image_url in `images` (default
    DATA's folder/images)."""
    rows = read_jsonl(data, "RefoMB prompts: JSONL rows with id, question and image_url", required=("id", "question"))
    items = []
    for number, row in enumerate(rows, 1):
        if row.get("image"):
            load, ref = _image_source(str(row["image"]), images or Path(data).parent)
        elif row.get("image_url"):
            path = (images or Path(data).parent / "images") / str(row["image_url"]).rsplit("/", 1)[-1]
            if not path.is_file():
                raise MissingBenchmarkFile(path, "RefoMB image, named like the end of its image_url")
            load, ref = _file_image(path), str(path)
        else:
            raise BadBenchmarkFile(f"{data}, line {number}: no image or image_url")
        items.append(Item(row["id"], load, ref, str(row["question"]), {"id": row["id"], "question": row["question"]}))
    return items


def _table_image(value: Any, base: Path, where: str) -> tuple[Callable[[], Any], str]:
    """An image cell of a Parquet / `datasets` table: {"bytes", "path"} (the `datasets` Image feature), raw bytes,
    or a string (path or base64)."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return _bytes_image(value["bytes"]), "inline"
        if value.get("path"):
            return _image_source(str(value["path"]), base)
    if isinstance(value, (bytes, bytearray)):
        return _bytes_image(bytes(value)), "inline"
    if isinstance(value, str) and value:
        return _image_source(value, base)
    raise BadBenchmarkFile(f"{where}: no usable image (expected bytes, a path or base64)")


def mmstar_items(data: Path) -> list[Item]:
    """MMStar's table; the prompt is the question (its options included) and an instruction to answer with the
    option's letter."""
    rows = read_table(data, "MMStar data (index, question, image, answer, category)", (*mmstar.COLUMNS, "image"))
    base = Path(data) if Path(data).is_dir() else Path(data).parent
    items = []
    for row in rows:
        load, ref = _table_image(row["image"], base, f"{data}, index {row['index']}")
        items.append(Item(row["index"], load, ref, str(row["question"]) + mmstar.PROMPT_SUFFIX,
                          {"index": row["index"], "category": row["category"]}))
    return items


def pope_items(data: Path, images: Path | None, split: str | None = None) -> list[Item]:
    """POPE's question files (one, or a folder of them named after their splits); images under `images` (COCO
    val2014, default the questions' folder). Keys are "<split>/<question_id>", so several splits share one file."""
    base = images or (Path(data) if Path(data).is_dir() else Path(data).parent)
    items = []
    for (s, qid), q in pope.load_questions(data, split).items():
        path = base / str(q["image"])
        if not path.is_file():
            raise MissingBenchmarkFile(path, "POPE image (COCO val2014)")
        items.append(Item(f"{s}/{qid}", _file_image(path), str(path), str(q["text"]) + pope.PROMPT_SUFFIX,
                          {"id": f"{s}/{qid}", "split": s, "question_id": q["question_id"], "question": q["text"]}))
    return items


KEY_FIELD = {"objhal": "id", "amber": "id", "mmhal": "index", "refomb": "id", "mmstar": "index", "pope": "id"}


def benchmark_items(benchmark: Benchmark, data: Path, images: Path | None, amber_split: str = "all",
                    pope_split: str | None = None) -> list[Item]:
    if benchmark == "objhal":
        return objhal_items(data, images)
    if benchmark == "amber":
        return amber_items(data, images, amber_split)
    if benchmark == "mmhal":
        return mmhal_items(data, images)
    if benchmark == "refomb":
        return refomb_items(data, images)
    if benchmark == "mmstar":
        return mmstar_items(data)
    if benchmark == "pope":
        return pope_items(data, images, pope_split)
    raise ValueError(f"benchmark {benchmark!r} is not one of {', '.join(KEY_FIELD)}")


def yes_no_answer(text: str) -> str | None:
    """'Yes' / 'No' when an answer starts with the word yes / no (any case, any punctuation after), else None."""
    words = text.strip().split(maxsplit=1)
    first = words[0].strip(".,!:;\"'").lower() if words else ""
    return {"yes": "Yes", "no": "No"}.get(first)


def decode(engine, images: list, questions: list[str], cfg: BenchGenerateConfig) -> list[str]:
    """One answer per (image, question) with the configured search: beams, greedy or sampling."""
    import torch

    kwargs: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "num_beams": cfg.num_beams,
                              "do_sample": cfg.do_sample}
    if cfg.do_sample:
        kwargs |= {"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": 0}
    torch.manual_seed(cfg.seed)
    enc = engine._inputs(images, questions)  # the engine's batching: chat template, left padding, device
    with torch.no_grad():
        out = engine.model.generate(**enc, **kwargs)  # (B, T + T_new)
    return [text for text, _ in engine._decode(out[:, enc["input_ids"].shape[1] :])]


def config_path(out: Path) -> Path:
    """Where the config that wrote a responses file is kept: beside it, `<name>.config.yaml`."""
    return Path(out).with_name(Path(out).name + ".config.yaml")


def generate(items: list[Item], out: Path, key_field: str, cfg: BenchGenerateConfig, engine=None,
             force_config: bool = False) -> dict[str, Any]:
    """Answer every item not yet in `out`; returns counts. `engine` defaults to an HFEngine on cfg.policy. A file
    written with another config is refused unless `force_config`."""
    bind_config(config_path(out), cfg, force=force_config, where=Path(out),
                fresh=f"use another --out file, or delete {out} and {config_path(out).name}")
    done = JsonlLog(out, key_field)
    todo = [it for it in items if it.key not in done]
    if todo and engine is None:
        import torch

        from rlaifv.engines.hf import HFEngine

        if not cfg.policy.path:
            raise ValueError("no policy: give --policy (a model folder or hub id)")
        engine = HFEngine(cfg.policy.path, device=cfg.policy.device, dtype=getattr(torch, cfg.policy.dtype),
                          trust_remote_code=cfg.policy.trust_remote_code)
    with progress("answering", len(items)) as bar:
        bar.advance(len(items) - len(todo))
        for start in range(0, len(todo), cfg.batch_size):
            batch = todo[start : start + cfg.batch_size]
            texts = decode(engine, [it.image() for it in batch], [it.question for it in batch], cfg)
            rows = []
            for it, text in zip(batch, texts):
                row = {**it.row, "response": text}
                if it.image_ref != "inline":
                    row.setdefault("image", it.image_ref)  # what `rlaifv eval human export` shows annotators
                if it.yes_no and cfg.amber_yes_no:
                    short = yes_no_answer(text)
                    if short is not None and short != text:
                        row |= {"response": short, "raw_response": text}
                rows.append(row)
            done.append(rows)
            bar.advance(len(batch))
    if todo:
        log(f"wrote {len(todo)} answers to {out}")
    return {"path": str(out), "items": len(items), "generated": len(todo), "resumed": len(items) - len(todo)}
