"""Prompt ingest on real files: every source format gives the same prompts, bad rows land in quarantine with their
reason, a killed ingest resumes to exactly one record per key, and the world's prompts round-trip to their scenes."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rlaifv.prompts import (
    ingest_prompts,
    load_image,
    read_prompt_rows,
    reason_kind,
    scene_of,
    write_world_prompts,
)
from rlaifv.records import BadInput, Prompt
from rlaifv.store import ShardedStore
from rlaifv.world.render import render
from rlaifv.world.scenes import sample_scenes, scene_from_dict, scene_to_dict

SQUARES = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


def _png(color: tuple[int, int, int], size: int = 8, noise_seed: int | None = None) -> bytes:
    if noise_seed is None:
        image = Image.new("RGB", (size, size), color)
    else:  # noisy pixels do not compress, so a truncated copy really lacks image data
        pixels = np.random.default_rng(noise_seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def squares(tmp_path: Path) -> dict[str, Path]:
    """Three small PNG files under tmp_path/imgs/."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = {}
    for name, color in SQUARES.items():
        paths[name] = folder / f"{name}.png"
        paths[name].write_bytes(_png(color))
    return paths


def _rows(squares: dict[str, Path], image_of) -> list[dict]:
    """One row per square; the last has no id, so its id must come from its content, the same in every format."""
    rows = [
        {"id": f"sq-{name}", "image": image_of(path), "question": f"What color is the {name} square?", "note": name}
        for name, path in squares.items()
    ]
    rows[-1]["id"] = None
    return rows


def _write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _ingest(source: Path, root: Path, shard_size: int = 1000) -> tuple[dict, ShardedStore[Prompt]]:
    store = ShardedStore(root, Prompt, shard_size=shard_size, stage="prompts")
    return ingest_prompts(source, store), store


def _summary(store: ShardedStore[Prompt]) -> list[tuple]:
    """What must not depend on how the image was stored: id, content hash, question, meta and pixels."""
    return sorted(
        (p.prompt_id, p.image_sha256, p.question, json.dumps(p.meta, sort_keys=True), load_image(p).tobytes())
        for p in store.read()
    )


def _quarantine(store: ShardedStore[Prompt]) -> dict[str, str]:
    return {q.record_key: q.reason for q in store.read_quarantine()}


def test_every_source_format_gives_the_same_prompts(tmp_path, squares):
    import datasets

    datasets.disable_progress_bars()
    sources = {
        "jsonl, relative paths": _write_jsonl(tmp_path / "rel.jsonl", _rows(squares, lambda p: f"imgs/{p.name}")),
        "jsonl, absolute paths": _write_jsonl(tmp_path / "elsewhere" / "abs.jsonl", _rows(squares, str)),
        "jsonl, datasets-style path dict": _write_jsonl(
            tmp_path / "dict.jsonl", _rows(squares, lambda p: {"bytes": None, "path": f"imgs/{p.name}"})
        ),
        "parquet, inline bytes": tmp_path / "bytes.parquet",
        "datasets save_to_disk folder": tmp_path / "ds",
    }
    pq.write_table(pa.Table.from_pylist(_rows(squares, Path.read_bytes)), sources["parquet, inline bytes"])
    columns = {k: [r[k] for r in _rows(squares, str)] for k in ("id", "image", "question", "note")}
    ds = datasets.Dataset.from_dict(columns).cast_column("image", datasets.Image())
    ds.save_to_disk(str(sources["datasets save_to_disk folder"]))

    stores = {name: _ingest(src, tmp_path / "stores" / str(i))[1] for i, (name, src) in enumerate(sources.items())}

    expected = _summary(stores["jsonl, relative paths"])
    assert len(expected) == 3 and {e[0] for e in expected} >= {"sq-red", "sq-green"}
    for name, store in stores.items():
        assert _summary(store) == expected, name
        assert all(p.meta["note"] in SQUARES and "id" not in p.meta for p in store.read()), name
        assert all(scene_of(p) is None for p in store.read()), name
    by_path = [sorted((p.prompt_id, p.image, p.image_bytes) for p in stores[k].read())
               for k in ("jsonl, relative paths", "jsonl, absolute paths")]
    assert by_path[0] == by_path[1]  # relative paths resolve against the file's folder
    assert all(Path(img).is_absolute() and data is None for _, img, data in by_path[0])
    inline = stores["parquet, inline bytes"].read_all()
    assert all(p.image == "" and p.image_bytes == squares[p.meta["note"]].read_bytes() for p in inline)
    assert stores["jsonl, relative paths"].read_config() == {"source": str(sources["jsonl, relative paths"])}


def test_bad_rows_are_quarantined_with_their_reason_and_good_rows_still_load(tmp_path, squares):
    imgs = tmp_path / "imgs"
    (imgs / "garbage.png").write_bytes(b"this is not an image")
    whole = _png((0, 0, 0), size=64, noise_seed=0)
    (imgs / "truncated.png").write_bytes(whole[: len(whole) // 2])
    good = {"image": "imgs/red.png", "question": "What is shown?"}
    source = _write_jsonl(tmp_path / "p.jsonl", [
        {"id": "ok-1", **good},
        {"id": "missing", "image": "imgs/nope.png", "question": "q?"},
        {"id": "garbage", "image": "imgs/garbage.png", "question": "q?"},
        {"id": "truncated", "image": "imgs/truncated.png", "question": "q?"},
        {"id": "blank-question", "image": "imgs/red.png", "question": "   "},
        {"id": "ok-1", "image": "imgs/green.png", "question": "second row with the same id"},
        {"question": "no image at all"},
        {"id": "number", "image": 42, "question": "q?"},
        "{not json",
        {"id": 7, "image": "imgs/blue.png", "question": "ids need not be text"},
    ])

    counts, store = _ingest(source, tmp_path / "store")

    assert counts == {"done": 2, "skipped": 0, "quarantined": {
        "image file not found": 1, "undecodable image": 2, "empty question": 1, "duplicate prompt id": 1,
        "no image": 1, "unsupported image type": 1, "unreadable row": 1}}
    reasons = {key: reason_kind(reason) for key, reason in _quarantine(store).items()}
    assert reasons == {
        "missing": "image file not found", "garbage": "undecodable image", "truncated": "undecodable image",
        "blank-question": "empty question", "ok-1@row-5": "duplicate prompt id", "row-6": "no image",
        "number": "unsupported image type", "row-8": "unreadable row",
    }
    assert str(imgs / "nope.png") in _quarantine(store)["missing"]  # the reason names the file
    prompts = {p.prompt_id: p for p in store.read()}
    assert set(prompts) == {"ok-1", "7"} and prompts["ok-1"].question == "What is shown?"  # the first row owns its id
    assert load_image(prompts["7"]).getpixel((0, 0)) == SQUARES["blue"]

    again, _ = _ingest(source, tmp_path / "store")
    assert again == {"done": 0, "skipped": 10, "quarantined": {}}


def test_corrupt_inline_bytes_are_quarantined(tmp_path, squares):
    source = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"id": "good", "image": squares["red"].read_bytes(), "question": "q?"},
        {"id": "corrupt", "image": b"\x89PNG\r\n\x1a\n broken!", "question": "q?"},
    ]), source)
    counts, store = _ingest(source, tmp_path / "store")
    assert counts["done"] == 1 and counts["quarantined"] == {"undecodable image": 1}
    assert list(_quarantine(store)) == ["corrupt"]
    assert json.loads(store.read_quarantine()[0].record)["image"] == "<16 bytes>"  # not a second copy of the image


def test_killed_ingest_resumes_to_exactly_one_record_per_key(tmp_path, squares):
    blocker = tmp_path / "imgs" / "slow.png"
    os.mkfifo(blocker)  # reading it blocks: the ingest is killed there, after the rows before it are on disk
    rows = [
        {"id": "p0", "image": "imgs/red.png", "question": "q0"},
        {"id": "p1", "image": "imgs/green.png", "question": "q1"},
        {"id": "bad", "image": "imgs/nope.png", "question": "q"},
        {"id": "p1", "image": "imgs/blue.png", "question": "duplicate"},
        {"id": "p2", "image": "imgs/blue.png", "question": "q2"},
        {"id": "p3", "image": "imgs/slow.png", "question": "q3"},
        {"id": "p4", "image": "imgs/red.png", "question": "q4"},
        {"image": "imgs/green.png", "question": "no id"},
    ]
    source = _write_jsonl(tmp_path / "p.jsonl", rows)
    store = ShardedStore(tmp_path / "store", Prompt, shard_size=1)
    script = ("import sys; from pathlib import Path; from rlaifv.prompts import ingest_prompts; "
              "from rlaifv.records import Prompt; from rlaifv.store import ShardedStore; "
              "ingest_prompts(Path(sys.argv[1]), ShardedStore(Path(sys.argv[2]), Prompt, shard_size=1))")
    log = tmp_path / "ingest.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-c", script, str(source), str(store.root)], stderr=err)
    try:
        deadline = time.monotonic() + 60
        while len(store) < 3 or len(store.quarantine_paths()) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    blocker.unlink()
    blocker.write_bytes(_png((1, 2, 3)))

    counts = ingest_prompts(source, store)

    assert counts == {"done": 3, "skipped": 5, "quarantined": {}}
    keys = [p.key for p in store.read()] + [q.record_key for q in store.read_quarantine()]
    assert max(Counter(keys).values()) == 1
    _, clean = _ingest(source, tmp_path / "clean")
    assert sorted(keys) == sorted([p.key for p in clean.read()] + [q.record_key for q in clean.read_quarantine()])
    assert _summary(store) == _summary(clean)


def test_load_image_detects_a_changed_or_missing_file(tmp_path, squares):
    source = _write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "image": "imgs/red.png", "question": "q?"}])
    _, store = _ingest(source, tmp_path / "store")
    (prompt,) = store.read_all()
    assert load_image(prompt).mode == "RGB" and load_image(prompt).getpixel((3, 3)) == SQUARES["red"]

    squares["red"].write_bytes(_png(SQUARES["green"]))
    with pytest.raises(BadInput, match="changed since ingest"):
        load_image(prompt)
    squares["red"].unlink()
    with pytest.raises(BadInput, match="image file not found"):
        load_image(prompt)


def test_unknown_source_kinds_fail_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match=".jsonl or .parquet"):
        read_prompt_rows(tmp_path / "prompts.csv")
    with pytest.raises(FileNotFoundError):
        read_prompt_rows(tmp_path / "absent.jsonl")


def test_scene_dict_round_trip_survives_json():
    for scene in sample_scenes(0, "train", 40):
        assert scene_from_dict(json.loads(json.dumps(scene_to_dict(scene)))) == scene
    broken = scene_to_dict(sample_scenes(0, "train", 1)[0]) | {"jitter": []}
    with pytest.raises(ValueError, match="jitter"):
        scene_from_dict(broken)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_world_prompts_round_trip_to_their_scenes(tmp_path, suffix):
    from rlaifv.world.language import instruction_for

    out = write_world_prompts(seed=3, split="val", n=4, out=tmp_path / f"world{suffix}")
    counts, store = _ingest(out, tmp_path / "store")

    scenes = sample_scenes(3, "val", 4)
    prompts = store.read_all()
    assert counts == {"done": 4, "skipped": 0, "quarantined": {}}
    assert [p.prompt_id for p in prompts] == [s.scene_id for s in scenes]
    for i, (prompt, scene) in enumerate(zip(prompts, scenes, strict=True)):
        assert scene_of(prompt) == scene
        assert np.array_equal(np.asarray(load_image(prompt)), np.asarray(render(scene)))
        assert prompt.question == instruction_for(i)
    if suffix == ".jsonl":
        assert all(not Path(json.loads(line)["image"]).is_absolute() for line in out.read_text().splitlines())
        assert sorted(p.name for p in (tmp_path / "world_images").iterdir()) == [f"{s.scene_id}.png" for s in scenes]
    else:
        assert all(p.image == "" and p.image_bytes for p in prompts)
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]

    with pytest.raises(BadInput, match="malformed world scene"):
        scene_of(dataclasses.replace(prompts[0], meta={"world": {"scene_id": "x"}}))


def test_cli_world_prompts_prints_one_json_object(tmp_path):
    from typer.testing import CliRunner

    from rlaifv.cli import app

    out = tmp_path / "p.jsonl"
    runner = CliRunner()
    result = runner.invoke(app, ["world", "prompts", "--split", "prompts", "--n", "3", "--out", str(out),
                                 "--preset", "micro", "--seed", "5", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data == {"path": str(out), "count": 3, "split": "prompts", "seed": 5,
                    "images": str(tmp_path / "p_images")}
    assert [row["id"] for row in read_prompt_rows(out)] == [s.scene_id for s in sample_scenes(5, "prompts", 3)]

    bad = runner.invoke(app, ["world", "prompts", "--split", "holdout", "--n", "3", "--out", str(out)])
    assert bad.exit_code == 2 and "--split" in bad.output
    helped = runner.invoke(app, ["world", "prompts", "--help"])
    assert helped.exit_code == 0 and ".parquet" in helped.stdout
