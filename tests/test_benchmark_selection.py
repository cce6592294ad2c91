"""`iterate --select-on chair | amber`: a round's checkpoint chosen on a held-out benchmark file. The order of
measurements by hand, a measurement with a stand-in policy, and one micro-world round selecting on CHAIR."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_loop import config_for
from typer.testing import CliRunner

from rlaifv.cli import app
from rlaifv.config import BenchmarkSelectConfig
from rlaifv.eval import bench_generate
from rlaifv.pipelines.selection import BenchmarkSelector, choose


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def objhal(tmp_path):
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (4 + i, 4)).save(tmp_path / f"{i}.png")  # told apart by their width
    prompts = _jsonl(tmp_path / "val.jsonl", [{"image_id": i, "question": "Describe the image.", "image": f"{i}.png"}
                                             for i in range(2)])
    truth = _jsonl(tmp_path / "truth.jsonl", [{"image_id": 0, "instances": ["dog"], "captions": []},
                                              {"image_id": 1, "instances": ["car"], "captions": []}])
    return BenchmarkSelectConfig(data=str(prompts), truth=str(truth))


def test_chair_selection_measures_answers_and_prefers_fewer_hallucinations(tmp_path, objhal, monkeypatch):
    # the stand-in "engine" is the checkpoint's answer per image (by image width)
    monkeypatch.setattr(bench_generate, "decode",
                        lambda engine, images, questions, cfg: [engine[im.size[0]] for im in images])
    selector = BenchmarkSelector("chair", objhal)
    clean = selector.measure(Path("ckpt-a"), tmp_path / "a", engine={4: "A dog on the grass.", 5: "A red car."})
    cat = selector.measure(Path("ckpt-b"), tmp_path / "b", engine={4: "A dog and a cat.", 5: "A car and a cat."})
    # clean: each answer names only its image's object -> CHAIRs refine 0/2; cat: both name an absent cat
    # -> CHAIRs refine 2/2, CHAIRi 2 of 4 mentions (dog, cat, car, cat)
    assert clean["chair_s_refine"] == 0.0 and cat["chair_s_refine"] == 1.0 and cat["chair_i"] == 2 / 4
    assert (tmp_path / "a" / "responses.jsonl").is_file()
    candidates = [{"step": 2, "metrics": cat}, {"step": 4, "metrics": clean}, {"step": 6, "metrics": clean}]
    assert choose(candidates, selector)["step"] == 4  # fewest hallucinations; on a tie the earlier step


def test_benchmark_orders_by_hand():
    chair = BenchmarkSelector("chair", BenchmarkSelectConfig(data="x", truth="y"))
    assert chair.order({"chair_s_refine": 0.2, "chair_s": 0.1, "chair_i": 0.05}) == (0.2, 0.05)
    assert chair.order({"chair_s_refine": None, "chair_s": 0.3, "chair_i": None}) == (0.3, float("inf"))
    amber = BenchmarkSelector("amber", BenchmarkSelectConfig(data="x"))
    assert amber.order({"amber_score": 80.0, "f1": 70.0, "accuracy": 60.0}) == (-80.0,)  # higher is better
    assert amber.order({"amber_score": None, "f1": 70.0, "accuracy": 60.0}) == (-70.0, -60.0)
    assert amber.order({"amber_score": None, "f1": None, "chair": 12.5}) == (12.5,)
    with pytest.raises(ValueError, match="select_benchmark.data and select_benchmark.truth"):
        BenchmarkSelector("chair", BenchmarkSelectConfig(data="x"))


def test_iterate_checks_the_benchmark_files_before_training(tmp_path):
    result = CliRunner().invoke(app, ["iterate", "--out", str(tmp_path / "run"), "--select-on", "chair",
                                      "--select-data", str(tmp_path / "gone.jsonl"), "--select-truth", "t.jsonl",
                                      "--preset", "micro"])
    assert result.exit_code == 1 and "gone.jsonl" in result.output
    assert not (tmp_path / "run" / "round-1").exists()


@pytest.mark.slow
def test_a_round_selects_its_checkpoint_on_held_out_chair(micro_world, micro_config, micro_cache, tmp_path):
    from rlaifv.pipelines.loop import iterate
    from rlaifv.world.render import render
    from rlaifv.world.scenes import sample_scenes

    rows = []
    for i, scene in enumerate(sample_scenes(micro_config.seed, "val", 3)):
        render(scene).save(tmp_path / f"{i}.png")
        rows.append({"image_id": i, "question": "Describe the image.", "image": f"{i}.png"})
    prompts = _jsonl(tmp_path / "objhal_val.jsonl", rows)
    truth = _jsonl(tmp_path / "truth.jsonl", [{"image_id": i, "instances": ["cup"], "captions": []}
                                              for i in range(3)])
    cfg = config_for(micro_world, rounds=1, checkpoints=2, test_metrics=False, select_on="chair",
                     select_benchmark={"data": str(prompts), "truth": str(truth), "num_beams": 1,
                                       "max_new_tokens": 12})
    summary = iterate(tmp_path / "run", cfg, world=micro_config)
    row = summary["rounds"][1]
    assert summary["select_on"] == "chair" and row["select_on"] == "chair"
    selection = json.loads((tmp_path / "run" / "round-1" / "select" / "selection.json").read_text())
    steps = [c["step"] for c in selection["candidates"]]
    assert len(steps) == 2 and 0 not in steps  # the starting policy competes on world selection only
    selector = BenchmarkSelector("chair", cfg.select_benchmark)
    for c in selection["candidates"]:
        answers = tmp_path / "run" / "round-1" / "select" / f"checkpoint-{c['step']}" / "responses.jsonl"
        assert len(answers.read_text().splitlines()) == 3
        # the stored measurement is what `rlaifv eval chair` says of the stored answers
        scored = CliRunner().invoke(app, ["eval", "chair", "--responses", str(answers), "--ground-truth", str(truth),
                                          "--json"])
        assert json.loads(scored.stdout)["chair_i"] == c["metrics"]["chair_i"]
    best = min(selection["candidates"], key=lambda c: (*selector.order(c["metrics"]), c["step"]))
    assert row["step"] == best["step"] and row["selection"] == best["metrics"]
