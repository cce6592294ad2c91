"""`rlaifv eval chair|amber|mmhal|generate|report` as a user runs them: one JSON object on stdout with --json,
readable errors naming missing files, LLM calls through a real local HTTP server, resumable generation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_mmhal import TEMPLATE, ChatServer, rating_from_answer
from typer.testing import CliRunner

from rlaifv.cli import app
from rlaifv.eval.bench_generate import yes_no_answer

DATA = Path(__file__).resolve().parent / "data"  # benchmark files with their licenses (tests/data/README.md)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _invoke(*args: str):
    return CliRunner().invoke(app, ["eval", *args])


@pytest.fixture()
def objhal_files(tmp_path):
    gt = _jsonl(tmp_path / "g.jsonl", [{"image_id": 1, "instances": ["dog"], "captions": ["A dog on a sofa."]},
                                       {"image_id": 2, "instances": ["car"], "captions": []}])
    responses = _jsonl(tmp_path / "r.jsonl", [
        {"image_id": 1, "question": "Describe the image.", "response": "A dog sleeps on a couch next to a cat."},
        {"image_id": 2, "question": "Describe the image.", "response": "A red car."}])
    return gt, responses


def test_chair_prints_exactly_one_json_object(objhal_files):
    gt, responses = objhal_files
    out = subprocess.run([sys.executable, "-m", "rlaifv.cli", "eval", "chair", "--responses", str(responses),
                          "--ground-truth", str(gt), "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)  # fails on anything but one object
    # r1: dog, couch (sofa's category), cat -> cat hallucinated; r2: car -> CHAIRi 1/4, CHAIRs 1/2
    assert result["chair_i"] == 1 / 4 and result["chair_s"] == 1 / 2 and result["chair_s_refine"] == 1 / 2
    assert result["per_response"][0]["hallucinated"] == [["cat", "cat"]]
    assert set(result) >= {"chair_s", "chair_s_refine", "chair_i", "recall", "n_responses", "per_response"}


def test_missing_files_are_named_without_a_traceback(tmp_path, objhal_files):
    gt, _ = objhal_files
    missing = _invoke("chair", "--responses", str(tmp_path / "none.jsonl"), "--ground-truth", str(gt))
    assert missing.exit_code == 2 and str(tmp_path / "none.jsonl") in missing.stderr
    assert "Traceback" not in missing.output
    coco = _invoke("chair", "--responses", str(objhal_files[1]), "--coco", str(tmp_path))
    assert coco.exit_code == 2 and str(tmp_path / "instances_train2014.json") in coco.stderr
    amber = _invoke("amber", "--responses", str(objhal_files[1]), "--amber-dir", str(tmp_path / "AMBER"))
    assert amber.exit_code == 2 and str(tmp_path / "AMBER" / "data" / "annotations.json") in amber.stderr
    mmhal = _invoke("mmhal", "--template", str(tmp_path / "t.json"), "--judgements", str(tmp_path / "j.jsonl"))
    assert mmhal.exit_code == 2 and str(tmp_path / "t.json") in mmhal.stderr


def test_amber_on_the_real_files(tmp_path):
    # query 1 is generative; 1005 (truth "yes") answered exactly, 8633 (existence) answered "Yes, there is."
    responses = _jsonl(tmp_path / "r.jsonl", [{"id": 1, "response": "A road through a forest by a lake."},
                                              {"id": 1005, "response": "Yes"},
                                              {"id": 8633, "response": "Yes, there is."}])
    out = tmp_path / "runs" / "amber.json"
    result = _invoke("amber", "--responses", str(responses), "--amber-dir", str(DATA / "amber"), "--out", str(out),
                     "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert json.loads(out.read_text()) == data
    # 2 answers, 1 exactly right: 1/2.001 -> 49.975 -> 50.0; road, forest, lake are all true objects of image 1
    assert data["discriminative"]["overall"]["accuracy"] == 50.0
    assert data["generative"]["chair"] == 0.0 and data["n_responses"] == {"generative": 1, "discriminative": 2}


def test_mmhal_offline_rescoring(tmp_path):
    lines = [{"index": i, "judge_output": f"Rating: {i % 7}"} for i in range(96)]
    judgements = _jsonl(tmp_path / "j.jsonl", lines)
    result = _invoke("mmhal", "--template", str(TEMPLATE), "--judgements", str(judgements), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    # ratings i % 7 over 96 questions: 13 full cycles (sum 21 each) + 0,1,2,3,4 -> (273 + 10) / 96;
    # below 3: 3 per cycle * 13 + (0, 1, 2) -> 42 / 96
    assert data["average_score"] == 283 / 96 and data["hallucination_rate"] == 42 / 96
    assert len(data["per_type"]) == 8


def test_mmhal_judges_through_an_http_server_and_resumes(tmp_path):
    responses = _jsonl(tmp_path / "r.jsonl", [{"index": i, "response": f"answer-{i % 7}"} for i in range(96)])
    server = ChatServer(rating_from_answer)
    try:
        args = ["mmhal", "--template", str(TEMPLATE), "--responses", str(responses), "--judge-url", server.url,
                "--judge-model", "judge", "--concurrency", "8", "--json"]
        first = _invoke(*args)
        assert first.exit_code == 0, first.output
        assert len(server.requests) == 96
        again = _invoke(*args)
        assert again.exit_code == 0 and len(server.requests) == 96  # everything came from the judgements file
    finally:
        server.close()
    assert json.loads(first.stdout)["average_score"] == 283 / 96
    assert json.loads(again.stdout) == json.loads(first.stdout)
    assert (tmp_path / "r.judgements.jsonl").is_file()


def test_chair_with_llm_extraction(tmp_path, objhal_files):
    gt, responses = objhal_files

    def extract(n, body, headers):
        answer = body["messages"][-1]["content"].split("Answer: ")[1]
        return 200, '["dog", "sofa", "cat"]' if "dog" in answer else "not a list"  # 2nd answer never parses

    server = ChatServer(extract)
    try:
        args = ["chair", "--responses", str(responses), "--ground-truth", str(gt), "--extract", "llm",
                "--llm-url", server.url, "--llm-model", "m", "--json"]
        result = _invoke(*args)
        assert result.exit_code == 0, result.output
        # "A red car." has 3 words: taken as naming nothing, without a call; the first answer is asked once
        assert len(server.requests) == 1
        again = _invoke(*args)
        assert len(server.requests) == 1
    finally:
        server.close()
    data = json.loads(result.stdout)
    assert data["extract"] == "llm" and data["n_extraction_failed"] == 0
    # dog, sofa -> couch, cat (hallucinated): CHAIRi 1/3; the short answer mentions nothing -> refine 1/1
    assert data["chair_i"] == 1 / 3 and data["chair_s_refine"] == 1.0 and data["chair_s"] == 1 / 2
    assert json.loads(again.stdout) == data


def test_report_compares_runs_with_the_paper(tmp_path):
    for name, resp, mention in (("base", 0.5, 0.25), ("round1", 0.2, 0.1)):
        run = tmp_path / name
        run.mkdir()
        (run / "chair.json").write_text(json.dumps({"chair_s": resp, "chair_s_refine": resp, "chair_i": mention,
                                                    "recall": 0.6, "extract": "llm"}))
        (run / "mmhal.json").write_text(json.dumps({"average_score": 2.5, "hallucination_rate": 0.4,
                                                    "per_type": {}}))
    out = tmp_path / "report"
    result = _invoke("report", f"base={tmp_path / 'base'}", str(tmp_path / "round1"), "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    md = (out / "report.md").read_text()
    assert "| base | ours (llm) | 50.0 | 25.0 |" in md  # fractions shown as percentages
    # each paper number carries the protocol differences of its benchmark: D1 the extractor LLM, D2 the word
    # rules (Object HalBench), D3 the judge (MMHal)
    assert "| RLAIF-V 7B | paper | 8.5 [D1, D2] | 4.3 [D1, D2] | — | — | 3.06 [D3] | 29.2 [D3] |" in md
    assert "**D3** (MMHal-Bench): rated by a judge the result does not name (re-scored offline)" in md
    assert {Path(p).name for p in summary["charts"]} == {"object_halbench.png", "mmhal_bench.png"}
    for chart in summary["charts"]:
        assert Path(chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = _invoke("report", str(tmp_path / "nothing"))
    assert bad.exit_code == 2 and "nothing" in bad.stderr


def test_report_flags_every_protocol_difference_next_to_the_paper(tmp_path):
    run = tmp_path / "r4"
    run.mkdir()
    results = {
        "chair": {"chair_s": 0.3, "chair_s_refine": 0.25, "chair_i": 0.1, "recall": 0.5, "extract": "rules"},
        "amber": {"discriminative": {"overall": {"accuracy": 80.0, "precision": 90.0, "recall": 80.0, "f1": 84.7}},
                  "n_responses": {"generative": 0, "discriminative": 40}, "n_mapped_yes_no": 12},
        "mmhal": {"average_score": 3.0, "hallucination_rate": 0.3, "per_type": {}, "judge_model": "qwen-judge"},
        "refomb": {"trustworthiness": {"win_rate": 0.55}, "overall": {"win_rate": 0.4}, "n_unparsed": 2,
                   "judge_model": "qwen-judge", "reference": "gpt4v.jsonl"},
        "mmstar": {"n": 10, "accuracy": 0.4, "unparsed": 3, "per_category": {}},
        "pope": {"per_split": {"random": {"accuracy": 0.9, "f1": 0.88}}},
        "human": {"n": 20, "hallucination_rate": 0.35, "ci95": [0.18, 0.57]},
    }
    for kind, result in results.items():
        (run / f"{kind}.json").write_text(json.dumps(result))
    out = tmp_path / "report"
    done = _invoke("report", str(run), "--out", str(out), "--no-charts", "--json")
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    md = (out / "report.md").read_text()
    ids = {d["text"].split(" ")[0] + " " + d["benchmark"]: d["id"] for d in summary["deviations"]}
    assert [d["benchmark"] for d in summary["deviations"]] == [
        "Object HalBench", "Object HalBench", "MMHal-Bench", "AMBER", "RefoMB", "RefoMB", "RefoMB", "MMStar",
        "MHumanEval", "POPE"]
    assert len(ids) == 10
    # ours: every benchmark's column, POPE from its one split
    assert ("| r4 | ours (rules) | 25.0 | 10.0 | 30.0 | 50.0 | 3.00 | 30.0 | 80.0 | 84.7 | 35.0 | 55.0 | 40.0 "
            "| 40.0 | 90.0 | 88.0 |") in md
    # the paper's numbers: Object HalBench flagged with D1 (word rules instead of an LLM) and D2 (tokenizer),
    # MMHal with D3 (another judge), AMBER with D4 (answers cut to Yes/No); no paper number for the others
    assert "| RLAIF-V 7B | paper | 8.5 [D1, D2] | 4.3 [D1, D2] | — | — | 3.06 [D3] | 29.2 [D3] | 76.8 [D4] " \
           "| 84.5 [D4] | — | — | — | — | — | — |" in md
    assert "**D1** (Object HalBench): objects found by CHAIR's word rules (r4)" in md
    assert "rated by qwen-judge with rlaifv's judge prompt, not by GPT-4" in md
    assert "**D4** (AMBER): 12 free-form answers to yes/no questions cut to their first word" in md
    assert "2 judgements without a readable verdict left out" in md and "against the reference answers in " \
        "gpt4v.jsonl; the paper's reference is GPT-4V" in md
    assert "3 answers named no single letter" in md
    assert "their published numbers are not part of rlaifv's reference table" in md
    paper_row = next(r for r in summary["rows"] if r["name"] == "RLAIF-V 7B")
    assert paper_row["flags"]["MMHal score"] == ["D3"] and "MMStar acc. %" not in paper_row["flags"]
    plain = _invoke("report", str(run), "--out", str(tmp_path / "plain"), "--no-charts", "--no-paper")
    assert plain.exit_code == 0 and "[D1" not in (tmp_path / "plain" / "report.md").read_text()


@pytest.mark.parametrize("text,short", [("Yes", "Yes"), ("no.", "No"), ("Yes, there is a cat.", "Yes"),
                                        ("Not really", None), ("", None), ("Noon", None)])
def test_yes_no_answers_for_amber(text, short):
    assert yes_no_answer(text) == short


@pytest.mark.slow
def test_generate_is_resumable_and_feeds_chair(micro_world, micro_cache, tmp_path):
    from rlaifv.world.render import render
    from rlaifv.world.scenes import sample_scenes

    rows = []
    for i, scene in enumerate(sample_scenes(0, "test", 3)):
        render(scene).save(tmp_path / f"{i}.png")
        rows.append({"image_id": i, "question": "Describe the image.", "image": f"{i}.png"})
    prompts = _jsonl(tmp_path / "prompts.jsonl", rows)
    out = tmp_path / "answers.jsonl"
    args = [sys.executable, "-m", "rlaifv.cli", "eval", "generate", "--benchmark", "objhal", "--data", str(prompts),
            "--policy", str(micro_world.policy), "--out", str(out), "--max-new-tokens", "12", "--batch-size", "2",
            "--json"]
    env = {**os.environ, "RLAIFV_CACHE": micro_cache}
    first = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"path": str(out), "items": 3, "generated": 3, "resumed": 0}
    lines = out.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [0, 1, 2]
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert json.loads(again.stdout)["generated"] == 0 and out.read_text().splitlines() == lines
    changed = subprocess.run([*args[:-1], "--num-beams", "1"], capture_output=True, text=True, env=env, timeout=600)
    assert changed.returncode == 2 and "num_beams: 3 -> 1" in changed.stderr  # another setting: refused
    assert out.read_text().splitlines() == lines and (tmp_path / "answers.jsonl.config.yaml").is_file()
    gt = _jsonl(tmp_path / "g.jsonl", [{"image_id": i, "instances": [], "captions": []} for i in range(3)])
    scored = _invoke("chair", "--responses", str(out), "--ground-truth", str(gt), "--json")
    assert scored.exit_code == 0 and json.loads(scored.stdout)["n_responses"] == 3


@pytest.mark.slow
def test_chair_llm_extraction_on_a_local_model_reports_unreadable_answers(micro_world, objhal_files, tmp_path):
    # The world's tiny splitter LM answers with numbered questions, never a JSON list: after 3 tries the one long
    # response counts as naming no object and is reported, not dropped ("A red car." is too short to ask about).
    gt, responses = objhal_files
    result = _invoke("chair", "--responses", str(responses), "--ground-truth", str(gt), "--extract", "llm",
                     "--llm-hf", str(micro_world.splitter), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["n_extraction_failed"] == 1 and data["n_mentions"] == 0 and data["chair_s_refine"] is None
    cached = [json.loads(line) for line in (tmp_path / "r.objects.jsonl").read_text().splitlines()]
    assert [row["index"] for row in cached] == [0, 0, 0]  # asked three times, one line per answer
