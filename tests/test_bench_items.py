"""`rlaifv eval generate` for the benchmarks added after the first three: which prompts and images it reads and
which rows it writes, with the policy's decoding replaced by a stand-in (the real decoding is tested in
test_eval_cli.py on the micro world)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from rlaifv.eval.bench_generate import KEY_FIELD, BenchGenerateConfig, benchmark_items, generate
from rlaifv.eval.benchfiles import MissingBenchmarkFile


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _answer(benchmark: str, data: Path, out: Path, images: Path | None = None) -> list[dict]:
    items = benchmark_items(benchmark, data, images)  # type: ignore[arg-type]
    generate(items, out, KEY_FIELD[benchmark], BenchGenerateConfig(batch_size=2), engine=object())
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_refomb_prompts_find_images_by_their_url(tmp_path, echo_policy):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (5, 4)).save(tmp_path / "images" / "test__20.jpg")
    Image.new("RGB", (3, 3)).save(tmp_path / "own.png")
    data = _jsonl(tmp_path / "RefoMB_dev.jsonl", [
        {"id": 0, "question": "What is the background?", "image_url": "https://host/x/test__20.jpg", "type": "a"},
        {"id": 1, "question": "Count them.", "image": "own.png"}])
    rows = _answer("refomb", data, tmp_path / "out.jsonl")
    assert rows == [
        {"id": 0, "question": "What is the background?", "response": "seen: What is the background?",
         "image": str(tmp_path / "images" / "test__20.jpg")},
        {"id": 1, "question": "Count them.", "response": "seen: Count them.", "image": str(tmp_path / "own.png")}]
    assert echo_policy == [(5, 4), (3, 3)]
    _jsonl(data, [{"id": 0, "question": "q", "image_url": "https://host/gone.jpg"}])
    with pytest.raises(MissingBenchmarkFile, match=str(tmp_path / "images" / "gone.jpg")):
        benchmark_items("refomb", data, None)
