"""The feedback engine end to end on the micro world: stages, resume after a real SIGKILL, quarantine, summary."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rlaifv.config import CollectConfig
from rlaifv.pipelines.collect import collect, run_stage, stores
from rlaifv.preferences import pair_store

N_PROMPTS = 6


@pytest.fixture(scope="module")
def world_prompts(tmp_path_factory, micro_config) -> Path:
    from rlaifv.prompts import write_world_prompts

    out = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    return write_world_prompts(micro_config.seed, "prompts", N_PROMPTS, out, micro_config.prior)


def config_for(world, **changes) -> CollectConfig:
    cfg = {
        "sample": {"policy": {"path": str(world.policy)}, "n": 4, "max_new_tokens": 40, "prompts_per_batch": 2,
                   "temperature": 1.0},
        "judge": {"labeler": {"path": str(world.labeler)}, "prompts_per_batch": 2},
        "shard_size": 3,
    }
    for key, value in changes.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return CollectConfig.model_validate(cfg)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, micro_world, world_prompts) -> Path:
    """One uninterrupted collect run: the reference every resumed run must equal."""
    out = tmp_path_factory.mktemp("collect") / "run"
    collect(world_prompts, out, config_for(micro_world))
    return out


def rows(out: Path, name: str) -> list[dict]:
    store = stores(out)[name] if name != "pairs" else pair_store(out)
    return sorted((r.to_row() for r in store.read()), key=lambda r: json.dumps(r, sort_keys=True, default=str))


def test_collect_writes_every_stage_and_a_summary(finished):
    summary = json.loads((finished / "summary.json").read_text())
    assert summary["stages"]["prompts"]["records"] == N_PROMPTS
    assert summary["stages"]["candidates"]["records"] == N_PROMPTS * 4
    claims = rows(finished, "claims")
    verdicts = rows(finished, "verdicts")
    quarantined = sum(summary["stages"]["claims"]["quarantined"].values())
    assert claims and len(verdicts) == len(claims)
    # every candidate either has claims or sits in quarantine with a reason
    with_claims = {(c["prompt_id"], c["sample_idx"]) for c in claims}
    assert len(with_claims) + quarantined == N_PROMPTS * 4
    assert all(c["question"].endswith("Answer yes or no.") for c in claims)
    for v in verdicts:
        assert v["accepted"] == (v["p_yes"] > v["p_no"])
    # the labeler was asked each distinct question of an image once
    assert summary["questions_asked"] == len({(c["prompt_id"], c["question"]) for c in claims})
    for name in ("candidates", "claims", "verdicts"):
        assert (finished / name / "config.yaml").exists()  # each stage echoes its config


def test_candidates_are_seeded_and_share_one_decoding_setting(finished, micro_world, world_prompts, tmp_path):
    again = tmp_path / "again"
    cfg = config_for(micro_world)
    run_stage("prompts", world_prompts, again, cfg)
    run_stage("sample", None, again, cfg)
    assert rows(again, "candidates") == rows(finished, "candidates")
    settings = {json.dumps(r["sampling"], sort_keys=True) for r in rows(finished, "candidates")}
    assert len(settings) == 1


CHILD = r"""
import os, signal, sys
from pathlib import Path
import rlaifv.store as store
from rlaifv.pipelines.collect import run_stage
from rlaifv.config import CollectConfig

stage, out, kill_after, cfg_json = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
folder = {"sample": "candidates", "claims": "claims", "judge": "verdicts"}[stage]
written = 0
atomic_write = store.atomic_write

def write_then_maybe_die(path, write):
    global written
    atomic_write(path, write)
    if path.parent.name == "shards" and path.parent.parent.name == folder:
        written += 1
        if written >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

store.atomic_write = write_then_maybe_die
run_stage(stage, None, out, CollectConfig.model_validate_json(cfg_json))
"""


@pytest.mark.parametrize("stage,before", [("sample", ["prompts"]), ("claims", ["prompts", "candidates"]),
                                          ("judge", ["prompts", "candidates", "claims"])])
def test_a_stage_killed_midway_resumes_to_the_uninterrupted_result(stage, before, finished, micro_world, tmp_path):
    out = tmp_path / "run"
    for name in before:
        shutil.copytree(finished / name, out / name)
    cfg = config_for(micro_world)
    proc = subprocess.run([sys.executable, "-c", CHILD, stage, str(out), "1", cfg.model_dump_json()],
                          env=os.environ.copy(), stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    name = {"sample": "candidates", "claims": "claims", "judge": "verdicts"}[stage]
    partial = rows(out, name)
    assert 0 < len(partial) < len(rows(finished, name))  # killed with work done and work left
    run_stage(stage, None, out, cfg)
    assert rows(out, name) == rows(finished, name)  # nothing lost, nothing twice


def test_bad_inputs_are_quarantined_with_reasons(micro_world, world_prompts, tmp_path):
    from rlaifv.prompts import read_prompt_rows

    src = [json.loads(line) for line in world_prompts.read_text().splitlines()]
    base = world_prompts.parent
    bad = tmp_path / "prompts.jsonl"
    (tmp_path / "broken.png").write_bytes(b"not a png")
    lines = [
        {**src[0], "image": str(base / src[0]["image"])},
        {**src[1], "image": str(base / src[1]["image"])},
        {"id": "gone", "image": str(tmp_path / "missing.png"), "question": "Describe the image."},
        {"id": "corrupt", "image": str(tmp_path / "broken.png"), "question": "Describe the image."},
        {"id": "blank", "image": str(base / src[2]["image"]), "question": "  "},
    ]
    bad.write_text("\n".join(json.dumps(r) for r in lines))
    assert len(list(read_prompt_rows(bad))) == 5
    out = tmp_path / "run"
    # An image deleted after ingest: the sampling stage quarantines that prompt and goes on.
    late = tmp_path / "late.png"
    shutil.copy(base / src[3]["image"], late)
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"id": "late", "image": str(late), "question": "Describe the image."}))
    cfg = config_for(micro_world)
    run_stage("prompts", bad, out, cfg)
    run_stage("prompts", extra, out, cfg)
    late.unlink()
    summary = collect(bad, out, cfg)
    prompts_q = summary["stages"]["prompts"]["quarantined"]
    assert sum(prompts_q.values()) == 3, prompts_q
    reasons = " ".join(q.reason for q in stores(out)["prompts"].read_quarantine())
    assert "missing.png" in reasons or "not found" in reasons.lower()
    sample_q = stores(out)["candidates"].read_quarantine()
    assert [q.record_key for q in sample_q] == ["late"]
    assert summary["stages"]["candidates"]["records"] == 2 * 4


def test_holistic_mode_judges_whole_responses(finished, micro_world, tmp_path):
    out = tmp_path / "holistic"
    for name in ("prompts", "candidates"):
        shutil.copytree(finished / name, out / name)
    cfg = config_for(micro_world, judge={"mode": "holistic"})
    for stage in ("claims", "judge", "pairs"):
        run_stage(stage, None, out, cfg)
    verdicts = rows(out, "verdicts")
    assert len(verdicts) == N_PROMPTS * 4  # one per response
    assert not (out / "claims" / "shards").exists()


def test_cli_collect_json_prints_one_object(finished, micro_world, tmp_path):
    out = tmp_path / "cli"
    shutil.copytree(finished, out)
    config = tmp_path / "collect.yaml"  # the settings `finished` was collected with: the rerun resumes it
    config.write_text(json.dumps(config_for(micro_world).model_dump(mode="json")))
    proc = subprocess.run(
        [sys.executable, "-m", "rlaifv.cli", "collect", "--out", str(out), "--config", str(config), "--json"],
        capture_output=True, text=True, timeout=300, env=os.environ.copy(),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["stages"]["candidates"]["records"] == N_PROMPTS * 4
    assert "feedback_precision" in summary


def test_llm_splitter_path_runs_on_the_world_splitter(finished, micro_world, tmp_path):
    # The world's bootstrap trains a tiny splitter LM; `--splitter llm` with no model uses it.
    assert micro_world.splitter is not None and (micro_world.splitter / "splitter.json").exists()
    out = tmp_path / "llm"
    for name in ("prompts", "candidates"):
        shutil.copytree(finished / name, out / name)
    cfg = config_for(micro_world, claims={"splitter": "llm"})
    result = run_stage("claims", None, out, cfg, micro_world_config())
    claims = stores(out)["claims"]
    split = {(c.prompt_id, c.sample_idx) for c in claims.read()}
    assert result["done"] == len(split)
    assert len(split) + len(claims.read_quarantine()) == N_PROMPTS * 4  # every response: claims or a reason


def micro_world_config():
    from rlaifv.world.config import WorldConfig

    return WorldConfig.preset("micro")


def test_each_distinct_question_of_an_image_is_asked_once(finished, micro_world, tmp_path):
    # Samples of one image repeat one another's claims; the labeler is asked each distinct question once and its
    # answer serves every claim that asks it -- equal to asking each claim on its own.
    from dataclasses import replace

    from rlaifv.config import JudgeConfig
    from rlaifv.engines.hf import HFEngine
    from rlaifv.feedback.judge import run_judge
    from rlaifv.prompts import load_image
    from rlaifv.store import ShardedStore

    s = stores(finished)
    claims = s["claims"].read_all()
    # a copy of every prompt's first response's claims as a further sample: duplicates whatever the sampling gave
    claims += [replace(c, sample_idx=99) for c in claims if c.sample_idx == 0]
    engine = HFEngine(micro_world.labeler)
    asked: list[list[str]] = []

    class CountingLabeler:  # the real engine; records what it is asked
        def yes_no_shared(self, groups, questions_per_pack=64, packs_per_forward=8):
            asked.extend(qs for _, qs in groups)
            return engine.yes_no_shared(groups, questions_per_pack, packs_per_forward)

        def fast_paths(self):
            return engine.fast_paths()

    from rlaifv.records import Verdict

    out = ShardedStore(tmp_path / "verdicts", Verdict, 3)
    result = run_judge(s["prompts"], claims, out, JudgeConfig(prompts_per_batch=2), CountingLabeler(), load_image)
    distinct = {(c.prompt_id, c.question) for c in claims}
    assert all(len(qs) == len(set(qs)) for qs in asked)
    assert result["asked"] == sum(map(len, asked)) == len(distinct) < len(claims)
    assert result["done"] == len(claims)

    verdicts = {v.key: v for v in out.read()}
    prompts = {p.prompt_id: p for p in s["prompts"].read()}
    alone = engine.yes_no([load_image(prompts[c.prompt_id]) for c in claims], [c.question for c in claims])
    for c, (p_yes, p_no) in zip(claims, alone):
        assert verdicts[c.key].p_yes == pytest.approx(p_yes, abs=1e-4)
        assert verdicts[c.key].p_no == pytest.approx(p_no, abs=1e-4)


def test_a_rerun_with_another_temperature_is_refused_and_leaves_the_store_alone(micro_world, world_prompts,
                                                                                 tmp_path):
    from typer.testing import CliRunner

    from rlaifv.cli import app

    out = tmp_path / "run"
    args = ["sample", "--prompts", str(world_prompts), "--out", str(out), "--policy", str(micro_world.policy),
            "--n", "2", "--max-new-tokens", "8", "--temperature", "1.0"]
    runner = CliRunner()
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    store = stores(out)["candidates"]
    before = {p.name: p.read_bytes() for p in [store.config_path, *store.shard_paths()]}
    assert len(store) == N_PROMPTS * 2

    refused = runner.invoke(app, [*args[:-1], "0.5"])
    assert refused.exit_code == 1
    assert "temperature: 1.0 -> 0.5" in refused.output  # the field, its old and its new value
    assert "--force-config" in refused.output and "new output folder" in refused.output  # continue, or start fresh
    assert {p.name: p.read_bytes() for p in [store.config_path, *store.shard_paths()]} == before  # untouched
    assert not store.quarantine_paths()

    again = runner.invoke(app, args)  # the same settings resume (nothing left to do)
    assert again.exit_code == 0, again.output
    forced = runner.invoke(app, [*args[:-1], "0.5", "--force-config"])  # continued on purpose: recorded
    assert forced.exit_code == 0, forced.output
    assert store.read_config()["temperature"] == 0.5 and len(store) == N_PROMPTS * 2


def test_a_corrupt_candidates_shard_is_named_then_recomputed_by_the_rerun(finished, micro_world, world_prompts,
                                                                           tmp_path):
    """After a finished run, one candidates shard loses a byte in place: every reader names it and refuses it, and
    rerunning collect resamples exactly its records, so every stage ends as the uninterrupted run's."""
    from rlaifv.files import CorruptFile

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    victim = stores(out)["candidates"].shard_paths()[1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(CorruptFile, match=str(victim)):
        stores(out)["candidates"].read_all()
    with pytest.raises(CorruptFile, match=str(victim)):  # a downstream stage reading it
        run_stage("pairs", None, out, config_for(micro_world))

    summary = collect(world_prompts, out, config_for(micro_world))
    assert summary["stages"]["candidates"]["records"] == N_PROMPTS * 4
    for name in ("candidates", "claims", "verdicts", "pairs"):
        assert rows(out, name) == rows(finished, name), name
    assert (out / "candidates" / "corrupt" / f"shards__{victim.name}").is_file()
    assert not victim.exists() or victim.read_bytes() != bytes(data)  # its name may be reused; never its bytes


def test_a_rerun_of_a_finished_collect_loads_no_model(micro_world, world_prompts, tmp_path):
    """Every record stored: the rerun finishes without its policy and labeler (gone from disk here) and says so;
    with one verdicts shard lost, the judge stage needs its labeler again and the load is what fails."""
    policy, labeler = shutil.copytree(micro_world.policy, tmp_path / "policy"), shutil.copytree(
        micro_world.labeler, tmp_path / "labeler")
    cfg = config_for(micro_world, sample={"policy": {"path": str(policy)}}, judge={"labeler": {"path": str(labeler)}})
    out = tmp_path / "run"
    assert collect(world_prompts, out, cfg)["fast_paths"]  # the first run names the fast paths its models took
    before = {name: rows(out, name) for name in ("candidates", "claims", "verdicts", "pairs")}
    shutil.rmtree(policy)
    shutil.rmtree(labeler)

    summary = collect(world_prompts, out, cfg)
    assert {name: rows(out, name) for name in before} == before
    for stage in ("sample", "judge"):
        assert run_stage(stage, None, out, cfg)["note"] == "every record was stored; the model was not loaded"
    assert "fast_paths" not in summary  # none ran this time

    stores(out)["verdicts"].shard_paths()[0].unlink()
    with pytest.raises(Exception, match="labeler"):
        run_stage("judge", None, out, cfg)
