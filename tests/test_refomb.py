"""RefoMB-style pairwise judging: verdict parsing, win rates worked out by hand, both orders judged through a real
HTTP judge on 127.0.0.1 (with a position-biased judge whose bias cancels), resume, offline re-scoring."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from test_mmhal import ChatServer
from typer.testing import CliRunner

from rlaifv.cli import app
from rlaifv.eval.refomb import parse_verdicts, refomb_scores
from rlaifv.eval.stats import bootstrap_interval


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("output,verdicts", [
    ("A hallucinates a dog.\nTrustworthiness: [[B]]\nOverall: [[B]]", {"trustworthiness": "B", "overall": "B"}),
    ("trustworthiness: [[ c ]]\n**Overall**: [[a]]", {"trustworthiness": "C", "overall": "A"}),
    ("Overall: [[A]] ... on reflection\nTrustworthiness: [[A]]\nOverall: [[B]]",
     {"trustworthiness": "A", "overall": "B"}),  # the last verdict of each kind counts
    ("Trustworthiness: [[A]]", None),  # one verdict missing
    ("[[A]]\n[[B]]", None),  # verdicts without their names
    ("Trustworthiness: [[D]]\nOverall: [[A]]", None),
])
def test_verdict_parser(output, verdicts):
    assert parse_verdicts(output) == verdicts


def test_scores_by_hand_with_an_unreadable_judgement():
    rows = [
        {"id": 1, "ours": "A", "type": "x", "judge_output": "Trustworthiness: [[A]]\nOverall: [[A]]"},  # win, win
        {"id": 1, "ours": "B", "type": "x", "judge_output": "Trustworthiness: [[C]]\nOverall: [[A]]"},  # tie, loss
        {"id": 2, "ours": "A", "type": "y", "judge_output": "Trustworthiness: [[B]]\nOverall: [[C]]"},  # loss, tie
        {"id": 2, "ours": "B", "type": "y", "judge_output": "no verdict at all"},  # left out
    ]
    result = refomb_scores(rows, seed=1, resamples=200)
    # trust: prompt 1 (1 + 1/2) / 2 = 3/4, prompt 2 0 -> 3/8; overall: prompt 1 (1 + 0) / 2, prompt 2 1/2 -> 1/2
    assert result["trustworthiness"]["win_rate"] == 3 / 8 and result["overall"]["win_rate"] == 1 / 2
    assert (result["trustworthiness"]["wins"], result["trustworthiness"]["ties"],
            result["trustworthiness"]["losses"]) == (1, 1, 1)
    assert result["n_unparsed"] == 1 and result["n_prompts"] == 2 and result["n_judgements"] == 4
    assert result["trustworthiness"]["ci95"] == bootstrap_interval([0.75, 0.0], seed=1, resamples=200)
    assert result["order_agreement"] == 0.0  # only prompt 1 has two readable orders, and they differ (win, loss)
    assert result["per_type"] == {"x": {"n": 1, "trustworthiness": 0.75, "overall": 0.5},
                                  "y": {"n": 1, "trustworthiness": 0.0, "overall": 0.5}}


def _between(prompt: str, start: str, end: str) -> str:
    return prompt.split(start, 1)[1].split(end, 1)[0]


def make_judge():
    """A judge that reads the markers in the answers: 'hallu' loses on trust and overall, 'verbose' loses overall
    only; between equals it says C on trust and, position-biased, A overall. Its first look at prompt 3 with our
    answer first is unreadable."""
    seen: set[str] = set()
    lock = threading.Lock()

    def reply(n, body, headers):
        prompt = body["messages"][-1]["content"]
        a = _between(prompt, "[Answer A]\n", "\n[End of answer A]")
        b = _between(prompt, "[Answer B]\n", "\n[End of answer B]")
        with lock:
            if a == "ours-3" and "first" not in seen:
                seen.add("first")
                return 200, "Both are fine, I think."
        if ("hallu" in a) != ("hallu" in b):
            trust = overall = "B" if "hallu" in a else "A"
        else:
            trust = "C"
            overall = ("B" if "verbose" in a else "A") if ("verbose" in a) != ("verbose" in b) else "A"
        return 200, f"Analysis.\nTrustworthiness: [[{trust}]]\nOverall: [[{overall}]]"

    return reply


@pytest.fixture()
def refomb_files(tmp_path):
    ours = _jsonl(tmp_path / "ours.jsonl", [{"id": 0, "response": "ours-0"}, {"id": 1, "response": "ours-1 hallu"},
                                            {"id": 2, "response": "ours-2"}, {"id": 3, "response": "ours-3"}])
    # the benchmark's reference file: the prompt's fields plus `answer` (id 3 has no description)
    ref = _jsonl(tmp_path / "ref.jsonl", [
        {"id": 0, "question": "Q0", "description": "A red bus.", "type": "perception", "answer": "ref-0 hallu"},
        {"id": 1, "question": "Q1", "description": "A cat.", "type": "perception", "answer": "ref-1"},
        {"id": 2, "question": "Q2", "description": "A chart.", "type": "reasoning", "answer": "ref-2"},
        {"id": 3, "question": "Q3", "type": "reasoning", "answer": "ref-3 verbose"}])
    return ours, ref


def test_refomb_judges_both_orders_resumes_and_rescores(tmp_path, refomb_files, monkeypatch):
    ours, ref = refomb_files
    monkeypatch.setenv("JUDGE_KEY", "sk-not-to-be-written")
    server = ChatServer(make_judge())
    try:
        args = ["eval", "refomb", "--responses", str(ours), "--reference", str(ref), "--judge-url", server.url,
                "--judge-model", "judge-m", "--api-key-env", "JUDGE_KEY", "--concurrency", "3", "--json"]
        first = CliRunner().invoke(app, args)
        assert first.exit_code == 0, first.output
        assert len(server.requests) == 9  # 4 prompts x 2 orders + the unreadable one asked again
        again = CliRunner().invoke(app, args)
        assert again.exit_code == 0 and len(server.requests) == 9  # all from the judgements file
    finally:
        server.close()
    data = json.loads(first.stdout)
    # trust per prompt: 0 win/win 1, 1 loss/loss 0, 2 tie/tie 1/2, 3 tie/tie 1/2 -> 2/4
    # overall: 0 -> 1, 1 -> 0, 2 the judge always says A: win, loss -> 1/2; 3 ours is not verbose: 1 -> 2.5/4
    assert data["trustworthiness"]["win_rate"] == 0.5 and data["overall"]["win_rate"] == 0.625
    assert (data["trustworthiness"]["wins"], data["trustworthiness"]["ties"], data["trustworthiness"]["losses"]) \
        == (2, 4, 2)
    assert (data["overall"]["wins"], data["overall"]["ties"], data["overall"]["losses"]) == (5, 0, 3)
    assert data["trustworthiness"]["ci95"] == bootstrap_interval([1, 0, 0.5, 0.5], seed=0, resamples=1000)
    assert data["order_agreement"] == 0.75 and data["n_unparsed"] == 0
    assert data["per_type"] == {"perception": {"n": 2, "trustworthiness": 0.5, "overall": 0.5},
                                "reasoning": {"n": 2, "trustworthiness": 0.5, "overall": 0.75}}
    assert data["judge_model"] == "judge-m"
    assert json.loads(again.stdout) == data

    prompts = [r["body"]["messages"][-1]["content"] for r in server.requests]
    assert sum("A red bus." in p for p in prompts) == 2  # the description stands in for the image
    assert all("No description of the image is available" in p for p in prompts if "Q3" in p)
    assert server.requests[0]["headers"]["Authorization"] == "Bearer sk-not-to-be-written"
    log = tmp_path / "ours.refomb.jsonl"
    assert "sk-not-to-be-written" not in log.read_text()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 9 and sorted({row["key"] for row in lines}) == sorted(
        f"{i}#ours-{o}" for i in range(4) for o in "AB")

    offline = CliRunner().invoke(app, ["eval", "refomb", "--judgements", str(log), "--out", str(tmp_path / "r.json"),
                                       "--json"])
    assert offline.exit_code == 0, offline.output
    assert json.loads(offline.stdout)["overall"] == data["overall"]
    assert json.loads(offline.stdout)["judge_model"] == "judge-m"  # read back from the judgements
    other_seed = CliRunner().invoke(app, ["eval", "refomb", "--judgements", str(log), "--seed", "5", "--json"])
    assert json.loads(other_seed.stdout)["trustworthiness"]["ci95"] == bootstrap_interval([1, 0, 0.5, 0.5], seed=5)


def test_refomb_input_errors_are_readable(tmp_path, refomb_files):
    ours, ref = refomb_files
    short = _jsonl(tmp_path / "short.jsonl", [{"id": 0, "response": "x"}])
    mismatch = CliRunner().invoke(app, ["eval", "refomb", "--responses", str(short), "--reference", str(ref),
                                        "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "m"])
    assert mismatch.exit_code == 2 and "3 only the reference's (id 1, 2, 3)" in mismatch.stderr
    nothing = CliRunner().invoke(app, ["eval", "refomb"])
    assert nothing.exit_code == 2 and "--judgements FILE" in nothing.stderr
    gone = CliRunner().invoke(app, ["eval", "refomb", "--judgements", str(tmp_path / "none.jsonl")])
    assert gone.exit_code == 2 and str(tmp_path / "none.jsonl") in gone.stderr
    bad = _jsonl(tmp_path / "bad.jsonl", [{"id": 0}])
    noanswer = CliRunner().invoke(app, ["eval", "refomb", "--responses", str(bad), "--reference", str(ref),
                                        "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "m"])
    assert noanswer.exit_code == 2 and "line 1: no response (or answer) for id 0" in noanswer.stderr
