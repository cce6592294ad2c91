"""Reproducing the paper on real models: two sets of defaults that never mix, no silent fallback to the world's tiny
models, fresh prompts per round, `--dry-run`, and the recipes in configs/recipes (each passes its own command's dry
run). Nothing here loads a model."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from rlaifv.config import (
    LR_FULL,
    LR_LORA,
    PAPER,
    BonConfig,
    CollectConfig,
    DPOConfig,
    IterateConfig,
    format_deviation,
    merge_config_data,
    paper_deviations,
)
from rlaifv.world.config import WORLD_ROUNDS, world_rounds_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs" / "recipes").glob("*.yaml"))
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
       "HF_HUB_OFFLINE": "1"}


def cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlaifv.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=ENV, timeout=timeout)


def user_prompts(path: Path, n: int) -> Path:
    """A prompts file that is not the world's: one image, n questions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (200, 30, 30)).save(path.parent / "red.png")
    rows = (json.dumps({"id": f"q{i}", "image": "red.png", "question": f"Describe the image, part {i}."})
            for i in range(n))
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def mine(tmp_path_factory) -> Path:
    return user_prompts(tmp_path_factory.mktemp("mine") / "mine.jsonl", 40)


@pytest.fixture(scope="module")
def world_file(tmp_path_factory) -> Path:
    from rlaifv.prompts import write_world_prompts

    return write_world_prompts(0, "prompts", 4, tmp_path_factory.mktemp("world") / "world.jsonl")


# -- two sets of defaults -----------------------------------------------------------------------------------------

# what the world's rounds ran with before the paper's defaults became IterateConfig's: they must not move
WORLD_PINNED = {"rounds": 3, "prompts_per_round": 768, "checkpoints": 20, "sample.n": 10, "sample.temperature": 0.7,
                "sample.max_new_tokens": 96, "pairs.length_balance": False, "pairs.keep_accepted": True,
                "pairs.closest_length": 2, "dpo.learning_rate": 1e-5, "dpo.num_train_epochs": 2.0,
                "dpo.per_device_train_batch_size": 8, "dpo.logging_steps": 5, "dpo.report_to": "none",
                "dpo.stop_fraction": 0.7, "dpo.rpo_alpha": 1.0, "claims.existence_claims": True}


def _pinned(cfg: dict) -> dict:
    out = {}
    for key in WORLD_PINNED:
        node, parts = cfg, key.split(".")
        for part in (["collect", *parts] if parts[0] in ("sample", "claims", "pairs") else parts):
            node = node[part]
        out[key] = node
    return out


def test_the_papers_defaults_are_the_configs_own():
    cfg = IterateConfig()
    assert (cfg.rounds, cfg.prompts_per_round, cfg.fresh_prompts) == (4, 4000, True)
    assert cfg.collect.sample.max_new_tokens == 512 and (cfg.collect.sample.n, cfg.collect.sample.temperature) == (
        10, 0.7)
    assert cfg.collect.pairs.length_balance and not cfg.collect.pairs.keep_accepted
    assert cfg.collect.pairs.closest_length == 0 and not cfg.collect.claims.existence_claims
    assert (cfg.dpo.beta, cfg.dpo.learning_rate, cfg.dpo.num_train_epochs) == (0.1, LR_FULL, 4.0)
    assert DPOConfig(use_peft=True).learning_rate == LR_LORA
    # only the project's documented choices differ from the paper: the rule splitter, and 'auto' selection
    assert [d["field"] for d in paper_deviations(cfg)] == ["select_on", "collect.claims.splitter"]
    assert all(d["note"] for d in paper_deviations(cfg))
    assert paper_deviations(DPOConfig()) == paper_deviations(BonConfig()) == []
    for section, values in PAPER.items():  # every paper value is a value some config field can hold
        assert values, section


def test_the_world_keeps_its_own_defaults():
    world = world_rounds_config().model_dump(mode="json")
    assert _pinned(world) == WORLD_PINNED
    found = {d["field"]: (d["value"], d["paper"]) for d in paper_deviations(world_rounds_config())}
    assert found["collect.pairs.length_balance"] == (False, True)
    assert found["collect.sample.max_new_tokens"] == (96, 512)
    assert found["dpo.learning_rate"] == (1e-5, LR_FULL)
    assert "rounds: 3 (the paper: 4)" in [format_deviation(d) for d in paper_deviations(world_rounds_config())]
    # fields given on top keep the rest of their section: the world's pairing survives a changed sample count
    tuned = world_rounds_config(collect={"sample": {"n": 4}})
    assert tuned.collect.sample.n == 4 and tuned.collect.pairs.keep_accepted
    assert set(WORLD_ROUNDS) <= set(IterateConfig.model_fields)


def test_deviations_leave_out_settings_that_do_not_act():
    rules = CollectConfig()
    assert "claims.temperature" not in [d["field"] for d in paper_deviations(rules)]  # greedy, but no LLM splits
    llm = CollectConfig.model_validate({"claims": {"splitter": "llm"}})
    assert [d["field"] for d in paper_deviations(llm)] == ["claims.temperature"]
    holistic = CollectConfig.model_validate({"judge": {"mode": "holistic"}})
    assert [d["field"] for d in paper_deviations(holistic)] == ["judge.mode"]
    assert paper_deviations(DPOConfig(lora_r=8, use_peft=True))[0]["field"] == "lora_r"
    assert paper_deviations(DPOConfig(rpo_alpha=0.0)) == []


def test_an_engine_of_another_kind_replaces_the_default_engine_whole():
    base = CollectConfig().model_dump()
    served = {"kind": "openai", "urls": ["http://h:8000/v1"], "model": "p"}
    merged = merge_config_data(base, {"sample": {"policy": served, "n": 4}})
    cfg = CollectConfig.model_validate(merged)
    assert cfg.sample.policy.urls == served["urls"] and cfg.sample.n == 4 and cfg.sample.max_new_tokens == 512
    local = merge_config_data(base, {"sample": {"policy": {"device": "cuda"}}})
    assert CollectConfig.model_validate(local).sample.policy.device == "cuda"


def test_iterate_dry_run_on_user_prompts_prints_the_papers_settings(mine):
    out = cli("iterate", "--prompts", str(mine), "--out", str(mine.parent / "run"), "--policy", "org/policy",
              "--labeler", "org/labeler", "--prompts-per-round", "10", "--dry-run", "--json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)  # one object
    cfg = plan["config"]
    assert plan["defaults"] == "paper" and plan["valid"]
    assert cfg["collect"]["pairs"]["length_balance"] is True
    assert cfg["collect"]["sample"]["max_new_tokens"] == 512
    assert cfg["collect"]["pairs"]["keep_accepted"] is False and cfg["collect"]["pairs"]["closest_length"] == 0
    assert (cfg["rounds"], cfg["dpo"]["learning_rate"], cfg["dpo"]["num_train_epochs"]) == (4, LR_FULL, 4.0)
    assert [d["field"] for d in plan["deviations"]] == ["prompts_per_round", "select_on", "collect.claims.splitter"]
    assert plan["work"]["per_round"]["samples"] == 100 and plan["work"]["total"]["prompts"] == 40
    assert plan["work"]["select_on"] == "reward"
    assert {m["source"] for m in plan["models"]} == {"hub id"}  # not downloaded: a warning each, not an error
    assert len(plan["warnings"]) == 2 and not (mine.parent / "run").exists()
    # the config it prints is the YAML the command takes back
    saved = mine.parent / "resolved.yaml"
    saved.write_text(yaml.safe_dump(cfg))
    again = cli("iterate", "--prompts", str(mine), "--out", str(mine.parent / "run"), "--config", str(saved),
                "--dry-run", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["config"] == cfg


def test_iterate_dry_run_on_the_world_keeps_the_worlds_settings(tmp_path, world_file):
    out = cli("iterate", "--out", str(tmp_path / "run"), "--dry-run", "--json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["defaults"] == "world" and _pinned(plan["config"]) == WORLD_PINNED
    assert plan["work"]["prompts_source"] == "fresh world scenes each round"
    assert plan["models"][0]["source"] == "world"
    # a file `rlaifv world prompts` wrote is world prompts too: the world's defaults, no model needed
    from_file = cli("iterate", "--out", str(tmp_path / "run"), "--prompts", str(world_file), "--prompts-per-round",
                    "2", "--rounds", "2", "--dry-run", "--json")
    assert from_file.returncode == 0, from_file.stderr
    plan = json.loads(from_file.stdout)
    assert plan["defaults"] == "world" and plan["config"]["collect"]["pairs"]["keep_accepted"] is True


def test_collect_dry_run_defaults_follow_the_prompts(mine, world_file, tmp_path):
    user = cli("collect", "--prompts", str(mine), "--out", str(tmp_path / "u"), "--policy", "org/p", "--labeler",
               "org/l", "--dry-run", "--json")
    assert user.returncode == 0, user.stderr
    assert json.loads(user.stdout)["config"]["pairs"]["length_balance"] is True
    world = cli("collect", "--prompts", str(world_file), "--out", str(tmp_path / "w"), "--dry-run", "--json")
    assert world.returncode == 0, world.stderr
    plan = json.loads(world.stdout)
    assert plan["defaults"] == "world" and plan["config"]["sample"]["max_new_tokens"] == 96
    assert plan["work"]["samples"] == 40 and not (tmp_path / "w").exists()


# -- no silent fallback ---------------------------------------------------------------------------------------------

NO_MODEL = """
import sys, time
from typer.testing import CliRunner
from rlaifv.cli import app
start = time.perf_counter()
result = CliRunner().invoke(app, sys.argv[1:])
print(result.exit_code, round(time.perf_counter() - start, 2),
      sorted(m for m in ("torch", "transformers") if m in sys.modules))
print(result.output)
"""


@pytest.mark.parametrize("args, option", [
    (["collect", "--out", "X"], "--policy"),
    (["collect", "--out", "X", "--policy", "org/p"], "--labeler"),
    (["collect", "--out", "X", "--policy", "org/p", "--labeler", "org/l", "--splitter", "llm"], "--splitter-model"),
    (["iterate", "--out", "X", "--labeler", "org/l"], "--policy"),
    (["iterate", "--out", "X", "--policy", "org/p"], "--labeler"),
], ids=lambda x: x if isinstance(x, str) else " ".join(x[:1]))
def test_a_missing_model_for_user_prompts_is_an_error_naming_the_option(mine, tmp_path, args, option):
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", NO_MODEL, *args, "--prompts", str(mine)], capture_output=True,
                         text=True, env=ENV, cwd=tmp_path, timeout=60)
    elapsed = time.perf_counter() - start
    first, message = out.stdout.split("\n", 1)
    code, _, modules = first.split(maxsplit=2)
    assert int(code) != 0 and elapsed < 5, (out.stdout, elapsed)
    message = " ".join(message.split())  # the console wraps long lines
    assert option in message and "not world prompts" in message, message
    assert modules.strip() == "[]"  # no torch, no transformers: no model was loaded
    assert not (tmp_path / "X").exists()


def test_collect_without_policy_exits_fast_from_the_command_line(mine, tmp_path):
    start = time.perf_counter()
    out = cli("collect", "--prompts", str(mine), "--out", str(tmp_path / "X"))
    assert out.returncode != 0 and time.perf_counter() - start < 5
    assert "--policy" in out.stderr and "Traceback" not in out.stderr


def test_a_stage_on_stored_user_prompts_never_falls_back_to_the_world(mine, tmp_path):
    from rlaifv.pipelines.collect import run_stage

    cfg = CollectConfig()
    run_stage("prompts", mine, tmp_path, cfg)
    for stage, option in (("sample", "--policy"), ("judge", "--labeler")):
        with pytest.raises(ValueError, match=f"pass {option}"):
            run_stage(stage, None, tmp_path, cfg)


def test_world_prompts_are_recognised_by_their_marker(world_file, mine, tmp_path):
    from rlaifv.prompts import is_world_prompts, write_world_prompts

    parquet = write_world_prompts(0, "prompts", 2, tmp_path / "w.parquet")
    assert is_world_prompts(world_file) and is_world_prompts(parquet)
    assert not is_world_prompts(mine) and not is_world_prompts(tmp_path / "missing.jsonl")
    fake = tmp_path / "fake.jsonl"
    fake.write_text(json.dumps({"image": "a.png", "question": "q", "world": "not a scene"}) + "\n")
    assert not is_world_prompts(fake)


# -- fresh prompts per round ------------------------------------------------------------------------------------------


def test_each_round_draws_its_own_seeded_slice():
    from rlaifv.pipelines.loop import round_rows

    rounds = [round_rows(100, 25, k, seed=0) for k in (1, 2, 3, 4)]
    assert sorted(sum(rounds, [])) == list(range(100))  # disjoint and covering
    assert all(r == sorted(r) and len(r) == 25 for r in rounds)
    assert rounds[0] == round_rows(100, 25, 1, seed=0) != round_rows(100, 25, 1, seed=1)
    with pytest.raises(ValueError, match="too short"):
        round_rows(100, 25, 5, seed=0)


def test_running_out_of_prompts_is_an_error_before_round_one(mine, tmp_path):
    from rlaifv.pipelines.loop import iterate

    cfg = IterateConfig.model_validate({"rounds": 3, "prompts_per_round": 20,
                                        "collect": {"sample": {"policy": {"path": "org/p"}},
                                                    "judge": {"labeler": {"path": "org/l"}}}})
    with pytest.raises(ValueError, match=r"holds 40 prompts.*need 60.*fresh_prompts: false"):
        iterate(tmp_path / "run", cfg, mine)
    assert not (tmp_path / "run").exists()  # nothing started
    whole = cfg.model_copy(update={"fresh_prompts": False})
    from rlaifv.pipelines.loop import check_inputs

    assert check_inputs(whole, mine) == {"world_prompts": False, "prompt_rows": 40}
    out = cli("iterate", "--prompts", str(mine), "--out", str(tmp_path / "run"), "--policy", "org/p", "--labeler",
              "org/l", "--dry-run")
    assert out.returncode == 2 and "--prompts-per-round" in out.stderr


# -- dry runs name what is wrong ------------------------------------------------------------------------------------


def test_a_dry_run_names_the_bad_field(mine, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("collect: {sample: {n: 0}}\n")
    out = cli("iterate", "--prompts", str(mine), "--out", str(tmp_path / "r"), "--config", str(bad), "--policy",
              "org/p", "--labeler", "org/l", "--prompts-per-round", "10", "--dry-run", "--json")
    assert out.returncode == 2 and "collect.sample.n" in out.stderr and out.stdout == ""
    missing = cli("collect", "--prompts", str(mine), "--out", str(tmp_path / "c"), "--policy", str(tmp_path / "no"),
                  "--labeler", "org/l", "--dry-run")
    assert missing.returncode == 2 and "sample.policy.path: no model folder" in missing.stderr
    folder = tmp_path / "model"
    folder.mkdir()
    empty = cli("train", "--pairs", str(mine), "--policy", str(folder), "--out", str(tmp_path / "t"), "--dry-run")
    assert empty.returncode == 2 and "--policy: " in empty.stderr and "config.json" in empty.stderr


def test_dry_runs_read_a_local_model_config_and_count_the_work(mine, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llava", "architectures": ["X"],
                                                    "text_config": {"max_position_embeddings": 4096}}))
    train = cli("train", "--pairs", str(mine), "--policy", str(folder), "--out", str(tmp_path / "t"), "--lora",
                "--batch-size", "4", "--grad-accum", "2", "--dry-run", "--json")
    assert train.returncode == 0, train.stderr
    plan = json.loads(train.stdout)
    assert plan["models"][0]["model_type"] == "llava" and plan["models"][0]["context"] == 4096
    assert plan["work"]["steps"] == 4 * 5 and plan["work"]["global_batch"] == 8  # 40 rows, 4 epochs
    assert plan["config"]["learning_rate"] == LR_LORA and plan["deviations"] == []
    bon = cli("bon", "--policy", str(folder), "--reference", str(folder), "--prompts", str(mine), "--out",
              str(tmp_path / "b"), "--n", "4", "--dry-run", "--json")
    assert bon.returncode == 0, bon.stderr
    plan = json.loads(bon.stdout)
    assert plan["work"]["samples"] == 160 and [d["field"] for d in plan["deviations"]] == []
    human = cli("bon", "--policy", str(folder), "--reference", str(folder), "--prompts", str(mine), "--out",
                str(tmp_path / "b"), "--dry-run")
    assert human.returncode == 0 and "# resolved config" in human.stderr and not (tmp_path / "b").exists()


# -- recipes ----------------------------------------------------------------------------------------------------------


def recipe_command(path: Path) -> list[str]:
    """The command a recipe's header gives (`# command:` and its continuation lines), as rlaifv's arguments."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# command:"))
    text = lines[start].split("command:", 1)[1].strip()
    i = start
    while not text or text.endswith("\\"):
        i += 1
        text = text.rstrip("\\") + " " + lines[i].lstrip("#").strip()
    words = shlex.split(text)
    if "rlaifv.cli" in words:  # accelerate launch ... -m rlaifv.cli ARGS
        return words[words.index("rlaifv.cli") + 1:]
    return words[words.index("rlaifv") + 1:]


def _data_for(args: list[str], cwd: Path, rows: int) -> None:
    """Stand-ins for the data a recipe's command names: a prompts file, a pairs folder in the RLAIF-V columns."""
    for flag, value in zip(args, args[1:]):
        if flag == "--prompts":
            user_prompts(cwd / value, rows)
        if flag == "--pairs":
            datasets = pytest.importorskip("datasets")
            image = cwd / "red.png"
            Image.new("RGB", (16, 16), (200, 30, 30)).save(image)
            pairs = datasets.Dataset.from_dict({
                "image": [str(image)] * 3, "question": ["What is it?"] * 3, "chosen": ["A red square."] * 3,
                "rejected": [f"A blue circle {i}." for i in range(3)], "ds_name": ["x"] * 3,
            }).cast_column("image", datasets.Image())
            pairs.save_to_disk(str(cwd / value))


def test_there_are_the_recipes_the_reproduction_doc_names():
    names = {p.stem for p in RECIPES}
    assert {"llava15-7b-paper", "qwen25vl-7b-self", "llava15-7b-lora-1gpu", "llava15-7b-lora-vllm",
            "rlaifv-dataset-train"} <= names
    doc = (ROOT / "docs" / "reproduce.md").read_text()
    for name in names:
        assert f"configs/recipes/{name}.yaml" in doc, name


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_passes_its_own_dry_run(recipe, tmp_path):
    header = recipe.read_text().split("\n\n")[0]
    assert "hardware:" in recipe.read_text() and "time" in recipe.read_text(), "the header says hardware and time"
    assert header.startswith("#")
    args = recipe_command(recipe)
    os.symlink(ROOT / "configs", tmp_path / "configs")  # the command names configs/... from the repository root
    data = yaml.safe_load(recipe.read_text())
    _data_for(args, tmp_path, data.get("rounds", 1) * data.get("prompts_per_round", 1))
    out = cli(*args, "--dry-run", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["valid"] and plan["defaults"] == "paper"
    for model in plan["models"]:  # hub ids: warned about, never downloaded
        assert model["source"] in ("hub id", "hub cache", "servers", "folder"), model
    fields = {d["field"] for d in plan["deviations"]}
    assert not fields & {"collect.pairs.length_balance", "collect.pairs.keep_accepted", "collect.sample.max_new_tokens",
                         "collect.claims.existence_claims",
                         "dpo.learning_rate", "rounds", "prompts_per_round", "fresh_prompts"}, fields
