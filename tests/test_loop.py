"""`rlaifv iterate` on the micro world: every round on disk, resume after a SIGKILL inside a round's DPO gives the same
result, reward selection picks the checkpoint whose implicit reward ranks held-out pairs best (recomputed here the
plain way), and the demo's report gets one row per round.

The micro world's labeler accepts every claim, so no response would ever lose to another and no pair would form;
these runs judge with the micro *policy* instead, which rejects every claim: the responses with fewer claims win.
The pairs teach nothing useful, but they are real pairs from real models, which is all the loop's mechanics need.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from rlaifv.config import EvalConfig, IterateConfig
from rlaifv.eval.report import FEEDBACK_KEYS, ROUND_KEYS
from rlaifv.logps.encode import PairEncoder
from rlaifv.logps.packed import separate_logps
from rlaifv.pipelines.loop import STATE, iterate
from rlaifv.pipelines.selection import WorldSelector, choose
from rlaifv.preferences import load_pairs
from rlaifv.prompts import load_image, write_world_prompts
from rlaifv.world.scenes import sample_scenes

PROMPTS = 6
STEPS_PER_ROUND = ("prompts", "collect", "split", "reference", "train", "select", "finish")


def config_for(world, **changes) -> IterateConfig:
    cfg = {
        "rounds": 2, "prompts_per_round": PROMPTS, "checkpoints": 2, "val_scenes": 8, "test_metrics": True,
        "collect": {"sample": {"n": 4, "max_new_tokens": 24, "temperature": 1.0, "prompts_per_batch": PROMPTS},
                    "judge": {"labeler": {"path": str(world.policy)}}},
        "dpo": {"learning_rate": 1e-4, "warmup_ratio": 0.0, "per_device_train_batch_size": 2, "max_steps": 4,
                "logging_steps": 1, "report_to": "none"},
        "eval": {"n_scenes": 8},
        "select_start": False,  # the micro world's 4-step rounds rarely beat the start: let them change the policy
    }
    for key, value in changes.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return IterateConfig.model_validate(cfg)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, micro_world, micro_config) -> dict:
    """An uninterrupted 2-round run, selecting on world metrics: what every resumed run must equal."""
    out = tmp_path_factory.mktemp("iterate") / "base"
    return iterate(out, config_for(micro_world), world=micro_config)


def _state(out: Path) -> dict:
    return json.loads((Path(out) / STATE).read_text())


def test_two_rounds_leave_every_round_on_disk(baseline, micro_world, micro_config):
    out, cfg = Path(baseline["out"]), config_for(micro_world)
    steps = _state(out)["steps"]
    assert [r["round"] for r in baseline["rounds"]] == [0, 1, 2]
    assert baseline["rounds"][0]["policy"] == str(micro_world.policy)
    scenes = [s.scene_id for s in sample_scenes(micro_config.seed, "prompts", 2 * PROMPTS, micro_config.prior)]
    for k in (1, 2):
        r, row = out / f"round-{k}", baseline["rounds"][k]
        assert all(f"round-{k}/{name}" in steps for name in STEPS_PER_ROUND)
        # fresh scenes: round k collects on the k-th slice of the prompts split
        assert pq.read_table(r / "prompts.parquet").column("id").to_pylist() == scenes[(k - 1) * PROMPTS:][:PROMPTS]
        # the round starts from the previous round's choice, which is also its reference
        start = baseline["rounds"][k - 1]["policy"]
        assert yaml.safe_load((r / "config.yaml").read_text())["policy"] == start
        run = yaml.safe_load((r / "dpo" / "run.yaml").read_text())
        assert run["policy"] == run["reference"] == str(Path(start).resolve())
        assert json.loads((r / "collect" / "summary.json").read_text())["stages"]["candidates"]["records"] == 24
        split = json.loads((r / "split.json").read_text())
        assert split["heldout"] == [] and row["n_pairs"] == len(split["train"]) > 0  # nothing held out on the world
        # every checkpoint was measured on val, and the choice is the lowest objective (the earlier step on a tie)
        checkpoints = sorted(int(p.name.split("-")[1]) for p in (r / "dpo" / "checkpoints").iterdir())
        assert checkpoints == [2, 4]
        measured = {s: json.loads((r / "select" / f"checkpoint-{s}.json").read_text()) for s in checkpoints}
        base_cover = steps["round-0/select"]["cover"]
        floor = base_cover - cfg.cover_tolerance  # below it, each unit of Cover lost costs cover_penalty CHAIRs
        scores = {s: m["chair_s"] + cfg.cover_penalty * max(0.0, floor - m["cover"]) for s, m in measured.items()}
        assert scores == {s: m["objective"] for s, m in measured.items()}
        assert row["step"] == min(checkpoints, key=lambda s: (scores[s], s))
        assert row["policy"] == str(r / "dpo" / "checkpoints" / f"checkpoint-{row['step']}" / "model")
        assert json.loads((r / "round.json").read_text()) == row
        assert set(ROUND_KEYS) | set(FEEDBACK_KEYS) <= set(row)
    assert json.loads((out / "summary.json").read_text())["rounds"] == baseline["rounds"]


def test_a_round_keeps_its_starting_policy_unless_a_checkpoint_beats_it(baseline, micro_world, micro_config,
                                                                         tmp_path):
    # Round 1 of the baseline again, with the starting policy among the candidates: same pairs, same checkpoints
    out = tmp_path / "start"
    run = iterate(out, config_for(micro_world, rounds=1, select_start=True), world=micro_config)
    steps, row = _state(out)["steps"], run["rounds"][1]
    selection = json.loads((out / "round-1" / "select" / "selection.json").read_text())
    start = baseline["rounds"][0]["policy"]
    assert [c["step"] for c in selection["candidates"]] == [0, 2, 4]
    assert selection["candidates"][0]["checkpoint"] == start
    assert selection["candidates"][0]["metrics"] == {**steps["round-0/select"],
                                                     "objective": steps["round-0/select"]["chair_s"]}
    by_step = {c["step"]: c["metrics"]["objective"] for c in selection["candidates"]}
    assert row["step"] == min(by_step, key=lambda s: (by_step[s], s))
    trained = out / "round-1" / "dpo" / "checkpoints" / f"checkpoint-{row['step']}" / "model"
    assert row["policy"] == (start if row["step"] == 0 else str(trained))
    # a kept start says why, in the round's row, its selection record and the run's report.md
    assert row.get("selection_note") == selection["note"]
    assert (selection["note"] is not None) == (row["step"] == 0)
    assert ("Why a round kept the policy it started from" in (out / "report.md").read_text()) == (row["step"] == 0)


def test_a_corrupt_checkpoint_found_by_a_later_round_redoes_the_round_that_wrote_it(baseline, micro_world,
                                                                                    micro_config, tmp_path, capsys):
    """Round 1 finished; its chosen checkpoint then loses a byte. Round 2, loading it as its policy, finds it corrupt:
    the run goes back to round 1's training, which recomputes the checkpoint, and ends as the uninterrupted run."""
    out = tmp_path / "run"
    first = iterate(out, config_for(micro_world, rounds=1), world=micro_config)
    chosen = Path(first["policy"])
    assert chosen.is_relative_to(out / "round-1" / "dpo")  # a trained checkpoint, not the starting policy
    weights = chosen / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))

    run = iterate(out, config_for(micro_world), world=micro_config)  # continued with its second round
    assert _without_paths(run["rounds"], out)[1:] == _without_paths(baseline["rounds"], Path(baseline["out"]))[1:]
    assert (out / "round-1" / "dpo" / "checkpoints" / "corrupt" / chosen.parent.name).is_dir()
    log = capsys.readouterr().err.replace("\n", "")
    assert str(weights) in log and "redoing round-1/train" in log
    trained = _state(out)["steps"]["round-1/train"]
    assert trained["resumed_from_step"] < int(chosen.parent.name.split("-")[1])  # recomputed, not reused


KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from rlaifv.config import IterateConfig
from rlaifv.world.config import WorldConfig
from rlaifv.pipelines.loop import iterate

out, cfg = Path(sys.argv[1]), IterateConfig.model_validate_json(sys.argv[2])

def die(step, metrics):  # round 2, DPO step 3: checkpoint-2 is saved, steps 3 and 4 are not
    if step == 3 and (out / "round-2" / "dpo").exists():
        os.kill(os.getpid(), signal.SIGKILL)

iterate(out, cfg, world=WorldConfig.preset("micro"), dpo_callback=die)
"""


def _without_paths(rows: list[dict], out: Path) -> list[dict]:
    return json.loads(json.dumps(rows).replace(str(out), "OUT"))


def test_sigkill_inside_a_round_resumes_to_the_same_result(baseline, micro_world, micro_config, tmp_path):
    out, cfg = tmp_path / "killed", config_for(micro_world)
    child = subprocess.run([sys.executable, "-c", KILLED_RUN, str(out), cfg.model_dump_json()],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    steps = _state(out)["steps"]
    assert "round-1/finish" in steps and "round-2/reference" in steps and "round-2/train" not in steps
    assert [p.name for p in (out / "round-2" / "dpo" / "checkpoints").iterdir()] == ["checkpoint-2"]

    resumed = iterate(out, cfg, world=micro_config)  # the same call again
    base_out = Path(baseline["out"])
    got, want = _without_paths(resumed["rounds"], out), _without_paths(baseline["rounds"], base_out)
    assert got[1:] == want[1:]  # same choices, metrics, pairs; round 0 is the same base policy
    trained, want_trained = _state(out)["steps"]["round-2/train"], _state(base_out)["steps"]["round-2/train"]
    assert trained["resumed_from_step"] == 2 and want_trained["resumed_from_step"] == 0
    assert trained["final"] == pytest.approx(want_trained["final"], rel=1e-6, abs=1e-6)
    resumed_weights = load_file(str(Path(resumed["policy"]) / "model.safetensors"))
    base_weights = load_file(str(Path(baseline["policy"]) / "model.safetensors"))
    for name, tensor in base_weights.items():
        torch.testing.assert_close(resumed_weights[name], tensor, atol=1e-6, rtol=0)

    # a finished run is not redone; another config is refused; more rounds continue it
    stamp = (out / STATE).stat().st_mtime_ns
    assert iterate(out, cfg, world=micro_config)["rounds"] == resumed["rounds"]
    assert (out / STATE).stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="another config"):
        iterate(out, config_for(micro_world, cover_tolerance=0.5), world=micro_config)
    more = iterate(out, cfg.model_copy(update={"rounds": 3}), world=micro_config)
    assert [r["round"] for r in more["rounds"]] == [0, 1, 2, 3] and more["rounds"][:3] == resumed["rounds"]
    assert (out / "round-3" / "round.json").is_file()


def _implicit_reward_accuracy(checkpoint: Path, reference: Path, pairs: list, beta: float) -> tuple[int, float]:
    """Correct pairs and mean margin of beta * log(pi / pi_ref), from two separate sequences per response."""
    def logps(path):
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
        processor = AutoProcessor.from_pretrained(path)
        encoder = PairEncoder(processor, None)
        with torch.no_grad():
            return separate_logps(model, [encoder(e, load_image(e.prompt)) for e in pairs],
                                  processor.tokenizer.pad_token_id)

    policy, ref = logps(checkpoint), logps(reference)
    margins = beta * (policy.chosen - ref.chosen) - beta * (policy.rejected - ref.rejected)
    assert bool((margins.abs() > 1e-3).all()), "a margin this close to 0 would make the count fragile"
    return int((margins > 0).sum()), float(margins.mean())


def test_select_on_reward_picks_the_best_held_out_reward_accuracy(micro_world, micro_config, micro_cache, tmp_path):
    prompts = write_world_prompts(micro_config.seed, "prompts", PROMPTS, tmp_path / "mine.jsonl", micro_config.prior)
    cfg = config_for(micro_world, rounds=1, checkpoints=3, heldout_fraction=0.5, test_metrics=None,
                     dpo={"learning_rate": 1e-3, "max_steps": 6})
    (tmp_path / "iterate.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude={"rounds"})))
    out = tmp_path / "run"
    child = subprocess.run(
        [sys.executable, "-m", "rlaifv.cli", "iterate", "--out", str(out), "--prompts", str(prompts), "--rounds", "1",
         "--config", str(tmp_path / "iterate.yaml"), "--preset", "micro", "--json"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "RLAIFV_CACHE": micro_cache})
    assert child.returncode == 0, child.stderr[-3000:]
    summary = json.loads(child.stdout)  # exactly one JSON object on stdout
    row = summary["rounds"][1]
    assert summary["select_on"] == "reward" and "chair_s" not in row  # a prompts file: no ground truth used

    # the held-out pairs are those of half the prompts, none of which trained
    r = out / "round-1"
    split = json.loads((r / "split.json").read_text())
    loaded = load_pairs(r / "collect")
    by_key = {e.key: e for e in loaded.examples}
    prompt_ids = {e.prompt.prompt_id for e in loaded.examples}
    assert len(split["heldout_prompts"]) == round(0.5 * len(prompt_ids))
    assert {by_key[k].prompt.prompt_id for k in split["heldout"]} == set(split["heldout_prompts"])
    assert not {by_key[k].prompt.prompt_id for k in split["train"]} & set(split["heldout_prompts"])
    assert sorted(split["train"] + split["heldout"]) == sorted(by_key) and row["n_pairs"] == len(split["train"])

    heldout = [by_key[k] for k in split["heldout"]]
    want = {}
    for path in sorted((r / "dpo" / "checkpoints").iterdir(), key=lambda p: int(p.name.split("-")[1])):
        step = int(path.name.split("-")[1])
        correct, margin = _implicit_reward_accuracy(path / "model", micro_world.policy, heldout, cfg.dpo.beta)
        got = json.loads((r / "select" / f"checkpoint-{step}.json").read_text())
        assert got["n"] == len(heldout) and round(got["accuracy"] * len(heldout)) == correct
        assert got["margin"] == pytest.approx(margin, abs=1e-4)
        want[step] = (-correct, -margin, step)
    assert len(want) == 3
    assert row["step"] == min(want, key=lambda s: want[s])


def test_a_prompts_file_round_with_dpo_launched_apart_equals_the_round_run_here(baseline, micro_world, micro_config,
                                                                                tmp_path):
    """Round 1 again from a prompts file that holds exactly its scenes (each round draws its own slice of the file;
    one round of all its rows draws them all), with DPO run by `rlaifv train` in a process the launcher starts: the
    same pairs, the same training, the same checkpoint chosen as the baseline's round 1, which drew the scenes
    itself and trained in this process."""
    prompts = write_world_prompts(micro_config.seed, "prompts", PROMPTS, tmp_path / "round1.jsonl",
                                  micro_config.prior)
    cfg = config_for(micro_world, rounds=1, select_on="world", launcher=sys.executable)
    run = iterate(tmp_path / "run", cfg, prompts, world=micro_config)
    r = tmp_path / "run" / "round-1"
    assert json.loads((r / "prompt_rows.json").read_text())["rows"] == list(range(PROMPTS))
    assert (r / "train.log").stat().st_size > 0 and (r / "dpo.yaml").is_file()
    row, base = run["rounds"][1], baseline["rounds"][1]
    assert row["step"] == base["step"] and row["n_pairs"] == base["n_pairs"]
    for key in (*ROUND_KEYS, "feedback_precision", "true_tie_rate"):
        assert row[key] == pytest.approx(base[key]), key
    assert row["selection"] == pytest.approx(base["selection"])
    assert "deviations" in json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "Settings that differ from the paper's" in (tmp_path / "run" / "report.md").read_text()


def test_demo_reports_one_row_per_round(baseline, micro_world, micro_config):
    from rlaifv.pipelines.demo import run_demo

    out = Path(baseline["out"])
    report = run_demo(out, 0, micro_config, EvalConfig(n_scenes=8), rounds=2, icfg=config_for(micro_world),
                      bon_samples=4)
    rows = report["rounds"]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert set(rows[0]) == {"round", "policy", *ROUND_KEYS} and rows[0]["policy"] == str(micro_world.policy)
    for k in (1, 2):
        assert set(rows[k]) == set(rows[0]) | set(FEEDBACK_KEYS) | {"step"}
        assert rows[k] == {key: baseline["rounds"][k][key] for key in rows[k]}  # the rounds were not run again
    assert report["select_on"] == "world" and report["val_scenes"] == 8
    md = (out / "report.md").read_text()
    assert "| base policy | starting policy |" in md
    for k in (1, 2):  # select_start is off: each round chose a DPO checkpoint of its own
        assert f"| round {k} | step {rows[k]['step']} |" in md
    assert "selected on the CHAIRs and Cover of 8 `val` scenes" in md and "kept" not in md
    checks = micro_world.manifest["train"]["labeler"]["checks"]
    assert report["bootstrap"]["labeler"]["checks"] == checks  # the bootstrap's own check, carried into the report
    assert (f"the bootstrap checked it on {checks[0]['n_questions']} claims about `val` scenes: accuracy "
            f"{checks[0]['accuracy']:.3f} after 1 training pass.") in " ".join(md.split())
    attempts = micro_world.manifest["train"]["vision_policy"]["attempts"]
    assert report["bootstrap"]["vision_policy"]["attempts"] == attempts and len(attempts) == 1
    assert "The vision alignment" not in md  # said only when it had to start again
    _check_charts(out, md)
    assert json.loads((out / "report.json").read_text())["rounds"] == rows
    _check_bon_section(report, out, micro_config)


def _check_charts(out: Path, md: str) -> None:
    """Both charts written as PNG files and shown by report.md."""
    assert "![CHAIRs, CHAIRi and Cover over rounds](rounds.png)" in md
    assert "![best-of-N: CHAIRs and length against N](bon.png)" in md
    for chart in ("rounds.png", "bon.png"):
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "chart skipped" not in md


def _bon_paragraph(md: str) -> str:
    section = md.split("## Best-of-N with the final policy's own reward")[1]
    return " ".join(section.split("| N |")[0].split())


def test_demo_report_names_the_reference_when_the_last_round_kept_its_policy(baseline, micro_world, micro_config,
                                                                               tmp_path):
    """A finished micro run whose round 2 kept the policy it started from (round 1's checkpoint), as a round does
    when none of its checkpoints beats its start on `val`: best-of-N scores round 1's checkpoint against round 1's
    reference, the base policy -- not against what round 2 started from -- and report.md says so, from the run's
    records."""
    from rlaifv.infer.bon import BonRow
    from rlaifv.pipelines.demo import run_demo
    from rlaifv.store import ShardedStore

    out = tmp_path / "kept"
    shutil.copytree(baseline["out"], out, ignore=shutil.ignore_patterns("bon", "report.*", "*.png"))
    state = json.loads((out / STATE).read_text())
    first, second = state["steps"]["round-1/finish"], state["steps"]["round-2/finish"]
    kept = {**second, **{k: first[k] for k in ROUND_KEYS}, "policy": first["policy"], "step": 0,
            "selection": first["selection"], "selection_note": "no checkpoint had lower `val` CHAIRs than its start"}
    state["steps"]["round-2/finish"] = kept
    (out / STATE).write_text(json.dumps(state))
    (out / "round-2" / "round.json").write_text(json.dumps(kept))

    report = run_demo(out, 0, micro_config, EvalConfig(n_scenes=8), rounds=2, icfg=config_for(micro_world),
                      bon_samples=2)
    base, round1 = str(micro_world.policy), first["policy"]
    assert base != round1 and second["policy"] != round1
    setup = report["bon_setup"]
    assert (setup["policy"], setup["reference"], setup["trained_in"]) == (round1, base, 1)
    assert json.loads((out / "report.json").read_text())["bon_setup"] == setup
    stored = ShardedStore(out / "bon" / "bon", BonRow).read_config()  # what best-of-N really ran with
    assert (stored["policy"]["path"], stored["reference"]["path"]) == (round1, base)

    md = (out / "report.md").read_text()
    _check_charts(out, md)
    text = _bon_paragraph(md)
    assert f"from the final policy, round 1's checkpoint (`{round1}`)" in text
    assert f"under the reference the base policy (`{base}`), the policy round 1 started from" in text
    assert "Round 1 was the last round that changed the policy (round 2 kept it)" in text
    assert "started from instead of a new checkpoint" in md and "Round 2 kept" in md
    assert "- Round 2: no checkpoint had lower `val` CHAIRs than its start." in md  # why, from the round's record
    assert f"| round 1 | step {first['step']} |" in md and "| round 2 | kept round 1's checkpoint |" in md


def _check_bon_section(report: dict, out: Path, world) -> None:
    """Round 2's policy against round 2's reference on the test scenes: N = 1 is the first sample of each scene, the
    largest N keeps the answer with the highest mean reward recomputed here from the stored log-probs."""
    from rlaifv.eval.world_metrics import description_metrics
    from rlaifv.infer.bon import BonRow
    from rlaifv.pipelines.world_bon import BON_KEYS
    from rlaifv.store import ShardedStore

    assert report["bon_setup"]["policy"] == report["models"]["rounds"][1] == report["rounds"][2]["policy"]
    assert report["bon_setup"]["reference"] == report["models"]["rounds"][0] == report["rounds"][1]["policy"]
    assert report["bon_setup"]["trained_in"] == 2
    text = _bon_paragraph((out / "report.md").read_text())
    assert f"from the final policy, round 2's checkpoint (`{report['bon_setup']['policy']}`)" in text
    assert (f"under the reference round 1's checkpoint (`{report['bon_setup']['reference']}`), the policy round 2 "
            "started from") in text
    assert "last round that changed" not in text  # round 2 changed it
    assert [(r["reward"], r["n"]) for r in report["bon"]] == [(k, n) for k in ("likelihood", "mean", "sum")
                                                                        for n in (1, 2, 4)]
    assert all(set(r) == set(BON_KEYS) for r in report["bon"])
    rows = ShardedStore(out / "bon" / "bon", BonRow).read_all()
    scenes = {s.scene_id: s for s in sample_scenes(world.seed, "test", 8, world.prior)}
    assert sorted(r.prompt_id for r in rows) == sorted(scenes) and all(len(r.texts) == 4 for r in rows)

    def metrics(pick) -> dict:
        got = description_metrics([scenes[r.prompt_id] for r in rows], [r.texts[pick(r)] for r in rows])
        return {k: pytest.approx(got[k]) for k in BON_KEYS[2:]}

    def best_mean(r) -> int:
        rewards = [(p - q) / t for p, q, t in zip(r.policy_logps, r.ref_logps, r.n_tokens)]
        return max(range(4), key=lambda i: (rewards[i], -i))

    by = {(r["reward"], r["n"]): r for r in report["bon"]}
    assert {k: by["mean", 1][k] for k in BON_KEYS[2:]} == metrics(lambda r: 0)
    assert {k: by["mean", 4][k] for k in BON_KEYS[2:]} == metrics(best_mean)
    def likeliest(r) -> int:
        return max(range(4), key=lambda i: (r.policy_logps[i] / r.n_tokens[i], -i))

    assert {k: by["likelihood", 4][k] for k in BON_KEYS[2:]} == metrics(likeliest)
    assert report["bon_setup"]["reward"] == "likelihood"
    md = (out / "report.md").read_text()
    assert "- bon.reward: likelihood (the paper: mean); 'likelihood' is the policy's own" in md
    assert "Why here: on development seeds 0 and 1 the log-ratio ranked" in md
    assert "## Best-of-N with the final policy's own reward" in md and "| 4 | sum |" in md


def test_every_setting_the_world_changes_from_the_paper_says_why(micro_world):
    from rlaifv.config import format_deviation
    from rlaifv.pipelines.demo import world_deviations
    from rlaifv.pipelines.world_bon import world_bon_config
    from rlaifv.world.config import WorldConfig, world_rounds_config

    found = world_deviations(world_rounds_config(), world_bon_config("p", "r", WorldConfig(), EvalConfig()))
    fields = [d["field"] for d in found]
    assert "prompts_per_round" in fields and "bon.reward" in fields and "collect.pairs.closest_length" in fields
    assert [f for f, d in zip(fields, found) if not d["why"]] == []  # a new world setting needs its reason
    assert all(". Why here: " in format_deviation(d) for d in found)
    mine = {d["field"]: d for d in world_deviations(world_rounds_config(collect={"sample": {"n": 3}}))}
    assert mine["collect.sample.n"]["why"] == ""  # a value the caller set: no world reason is claimed for it


def test_every_iterate_field_is_documented():
    for name, field in IterateConfig.model_fields.items():
        assert field.description, f"{name} has no description"
    with pytest.raises(ValueError, match="eval.split must be 'test'"):
        IterateConfig(eval=EvalConfig(split="val"))
    served = {"kind": "openai", "urls": ["http://127.0.0.1:8000/v1"], "model": "policy"}
    with pytest.raises(ValueError, match="needs `path`"):  # a served policy: where its weights are, how to serve
        IterateConfig.model_validate({"collect": {"sample": {"policy": served}}})  # the next rounds' policies
    with pytest.raises(ValueError, match="serve.restart_command"):
        IterateConfig.model_validate({"collect": {"sample": {"policy": {**served, "path": "start/"}}}})
    assert IterateConfig.model_validate({"collect": {"sample": {"policy": {**served, "path": "start/"}}},
                                         "serve": {"restart_command": "restart {policy}"}}).serve.restart_command
    assert IterateConfig.model_validate({"collect": {"judge": {"labeler": served}}}).collect.judge.labeler.urls
    with pytest.raises(ValueError, match="needs `urls`"):
        IterateConfig.model_validate({"collect": {"judge": {"labeler": {"kind": "openai", "model": "labeler"}}}})


def test_report_md_reads_what_ran_from_the_records(tmp_path):
    """The report writer on records written by hand: a round that changed the policy, one that could not train and
    kept it; an older report.json without per-round policies names the checkpoints from `models`."""
    from rlaifv.eval.report import write_report

    row = dict(zip(ROUND_KEYS, (0.5, 0.3, 0.6, 0.2, 20.0)))
    feedback = {"n_pairs": 10, "feedback_precision": 0.75, "true_tie_rate": 0.2, "error_precision": None}
    report = {
        "seed": 3, "select_on": "reward", "n_test_scenes": 40,
        "labeler": {"accuracy": 0.9, "hard_negative_accuracy": 0.9, "false_rejection_rate": 0.1},
        "rounds": [{"round": 0, "policy": "runs/base", **row},
                   {"round": 1, "policy": "runs/r1/ckpt-6", **row, **feedback, "step": 6},
                   {"round": 2, "policy": "runs/r1/ckpt-6", **row, **feedback, "n_pairs": 0, "step": 0,
                    "skipped": "no pairs"}],
        "bon": [{"n": n, "reward": "mean", **row} for n in (1, 2)],
        "bon_setup": {"policy": "runs/r1/ckpt-6", "reference": "runs/base", "trained_in": 1, "samples": 2,
                      "temperature": 0.7, "scored": 40, "quarantined": 0},
        "models": {"policy": "runs/base", "labeler": "models/labeler", "rounds": ["runs/r1/ckpt-6"] * 2},
        "bootstrap": {"vision_policy": {"seconds": 60.0, "steps": 3000, "attempts": [0.1253, 0.042]},
                      "labeler": {"seconds": 30.0, "steps": 375}},
    }
    write_report(tmp_path, report)
    md = (tmp_path / "report.md").read_text()
    _check_charts(tmp_path, md)
    assert "Synthetic world, seed 3, held-out `test` split (40 scenes)" in md
    assert "selected by the implicit-reward accuracy on its held-out pairs" in md
    assert "| round 1 | step 6 |" in md and "| round 2 | kept, could not train: no pairs |" in md
    text = _bon_paragraph(md)
    assert "2 answers per test scene at temperature 0.7 from the final policy, round 1's checkpoint" in text
    assert "under the reference the base policy (`runs/base`), the policy round 1 started from" in text
    assert "(round 2 kept it)" in text
    assert "The labeler `models/labeler`" in md
    assert ("The vision alignment both models read images through started 2 times: its relative error was 0.125, "
            "then 0.042; the lowest was kept.") in " ".join(md.split())

    older = {**report, "rounds": [{k: v for k, v in r.items() if k not in ("policy", "step", "skipped")}
                                  for r in report["rounds"]],
             "bon_setup": {k: v for k, v in report["bon_setup"].items() if k != "trained_in"}}
    write_report(tmp_path / "older", older)
    text = _bon_paragraph((tmp_path / "older" / "report.md").read_text())
    assert "from the final policy, round 1's checkpoint (`runs/r1/ckpt-6`)" in text
    assert "under the reference the base policy (`runs/base`)." in text


def test_world_selection_trades_chair_s_against_lost_cover(micro_config):
    """Base Cover 0.80, tolerance 0.03, penalty 5: Cover may fall to 0.77 for free, each 0.01 below costs 0.05."""
    selector = WorldSelector(micro_config, EvalConfig(split="val", n_scenes=1), 0.80, 0.03, 5.0)

    def candidate(step: int, chair_s: float, cover: float) -> dict:
        metrics = {"chair_s": chair_s, "cover": cover}
        return {"step": step, "metrics": {**metrics, "objective": selector.objective(metrics)}}

    fewer_objects = candidate(10, 0.05, 0.70)
    kept_cover, same_later = candidate(20, 0.15, 0.78), candidate(30, 0.15, 0.79)
    assert fewer_objects["metrics"]["objective"] == pytest.approx(0.05 + 5 * 0.07)
    assert kept_cover["metrics"]["objective"] == same_later["metrics"]["objective"] == pytest.approx(0.15)
    assert choose([fewer_objects, same_later, kept_cover], selector)["step"] == 20  # a tie: the earlier step
    assert choose([fewer_objects, kept_cover, candidate(50, 0.12, 0.771)], selector)["step"] == 50
    with pytest.raises(ValueError, match="'val' split"):
        WorldSelector(micro_config, EvalConfig(split="test"), 0.80, 0.03, 5.0)


def test_world_selection_says_why_a_round_kept_its_start(micro_config):
    """Base Cover 0.80, tolerance 0.03: a start that no checkpoint beats was kept either because none lowered CHAIRs
    or because every one that did named fewer real objects than the allowed 0.77 (a Cover-bound round)."""
    selector = WorldSelector(micro_config, EvalConfig(split="val", n_scenes=1), 0.80, 0.03, 100.0)

    def candidate(step: int, chair_s: float, cover: float) -> dict:
        metrics = {"chair_s": chair_s, "cover": cover}
        return {"step": step, "metrics": {**metrics, "objective": selector.objective(metrics)}}

    start = candidate(0, 0.12, 0.775)
    bound = [start, candidate(10, 0.13, 0.79), candidate(20, 0.05, 0.74), candidate(30, 0.08, 0.765)]
    assert choose(bound, selector)["step"] == 0
    note = selector.why_start_kept(bound)
    assert note.startswith("Cover-bound: the 2 checkpoints with lower `val` CHAIRs (down to 0.050 at step 20)")
    assert "Cover at most 0.765, below the 0.770 allowed (cover_tolerance 0.03 below the base policy's 0.800)" in note
    flat = [start, candidate(10, 0.12, 0.80), candidate(20, 0.15, 0.78)]
    assert choose(flat, selector)["step"] == 0
    assert selector.why_start_kept(flat) == "no checkpoint had lower `val` CHAIRs than its start (0.120)"
    assert selector.cover_bound(bound, choose(bound, selector))
    assert not selector.cover_bound(flat, choose(flat, selector))  # kept, but not for Cover
    moved = [*bound, candidate(40, 0.10, 0.78)]  # a checkpoint beats the start: the round was not held back
    assert choose(moved, selector)["step"] == 40 and not selector.cover_bound(moved, choose(moved, selector))


def test_rounds_after_a_cover_bound_round_rank_their_pairs_as_cover_bound_closest_by_says(micro_world, micro_config,
                                                                                         tmp_path):
    from rlaifv.pipelines.loop import Loop

    finished = {"round-1/finish": {"round": 1}, "round-2/finish": {"round": 2, "cover_bound": True},
                "round-3/finish": {"round": 3}}
    for switch, wanted in ((None, ["words"] * 4), ("mixed", ["words", "words", "mixed", "mixed"])):
        loop = Loop(tmp_path, config_for(micro_world, rounds=4, cover_bound_closest_by=switch), None, micro_config)
        loop.state = {"steps": finished}
        assert [loop._collect_config(k, "policy").pairs.closest_by for k in (1, 2, 3, 4)] == wanted
        assert [loop._collect_config(k, "policy").pairs.round for k in (1, 2, 3, 4)] == [1, 2, 3, 4]
