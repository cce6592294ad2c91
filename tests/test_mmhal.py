"""MMHal-Bench: the reference rating parser, the scores, and judging through a real HTTP chat server on 127.0.0.1
(retries on 5xx, a clear error on 4xx, resume without double counting)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rlaifv.engines.openai_chat import ChatClient, ChatError, ChatSettings
from rlaifv.eval.benchfiles import BadBenchmarkFile, JsonlLog, MissingBenchmarkFile
from rlaifv.eval.llm_calls import run_calls
from rlaifv.eval.mmhal import judge_jobs, load_template, mmhal_scores, parse_rating, read_judgements

# MMHal-Bench's answer template, copied into the repository with its license (tests/data/README.md)
TEMPLATE = Path(__file__).resolve().parent / "data" / "mmhal" / "mmhal-bench_answer_template.json"


class ChatServer:
    """A minimal stand-in for a remote OpenAI-compatible server: `reply(n, request, headers)` -> (status, text)
    decides each answer; every request is recorded."""

    def __init__(self, reply):
        self.reply, self.requests, self.lock = reply, [], threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                    n = len(outer.requests)
                status, text = outer.reply(n, body, self.headers)
                payload = (json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]})
                           if status == 200 else json.dumps({"error": {"message": text}})).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def rating_from_answer(n, body, headers):
    """Rates each answer by the digit after 'answer-' in the assistant's answer: 'answer-4' -> 'Rating: 4'."""
    prompt = body["messages"][-1]["content"]
    digit = prompt.split("Assistant's answer: answer-")[1][0]
    return 200, f"The answer is fine.\nRating: {digit}"


@pytest.fixture()
def server_factory():
    servers = []

    def make(reply):
        servers.append(ChatServer(reply))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def settings(url, **kw):
    return ChatSettings(url=url, model="judge", backoff_s=0.0, max_backoff_s=0.0, timeout_s=10, **kw)


@pytest.mark.parametrize("output,rating", [
    ("The answer is accurate.\nRating: 5", 5),
    ("RATING: 6", 6),  # lowercased before the search
    ("No rating given at all.", 0),  # zero ratings
    ("Rating: 2 at first, but on reflection Rating: 4", 0),  # several different ratings
    ("rating: 4. Final rating: 4", 4),  # the same rating twice is one rating
    ("Rating 5", 0),  # malformed: no colon
    ("rating:5", 0),  # malformed: no space
    ("Rating: five", 0),  # malformed: a word
    ("Rating: 10", 1),  # the reference's substring test reads "rating: 1"
])
def test_rating_parser_follows_the_reference_rule(output, rating):
    assert parse_rating(output) == rating


def _mini_template(tmp_path, n=8):
    questions = json.loads(TEMPLATE.read_text())[:n]
    path = tmp_path / "template.json"
    path.write_text(json.dumps(questions))
    return path


def test_scores_by_hand(tmp_path):
    template = load_template(_mini_template(tmp_path))
    outputs = {0: "Rating: 6", 1: "Rating: 5", 2: "no idea", 3: "Rating: 2", 4: "Rating: 3",
               5: "Rating: 1 or Rating: 5", 6: "Rating: 4", 7: "Rating: 1"}
    result = mmhal_scores(template, outputs)
    # ratings 6, 5, 0, 2, 3, 0, 4, 1: mean 21/8; below 3: 0, 2, 0, 1 -> 4 of 8
    assert result["average_score"] == 21 / 8
    assert result["hallucination_rate"] == 4 / 8
    assert result["per_type"] == {"attribute": 6.0, "adversarial": 5.0, "comparison": 0.0, "counting": 2.0,
                                  "relation": 3.0, "environment": 0.0, "holistic": 4.0, "other": 1.0}
    assert result["n_unparsable"] == 2


def test_real_template_has_96_questions_of_8_types():
    template = load_template(TEMPLATE)
    assert len(template) == 96
    # type = index mod 8, as the benchmark's scripts assume
    assert all(q["question_type"] == template[i % 8]["question_type"] for i, q in enumerate(template))


def test_judgements_file_last_line_wins_and_a_cut_line_is_ignored(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"index": 0, "judge_output": "Rating: 1"}\n{"index": 1, "judge_output": "Rating: 2"}\n'
                    '{"index": 0, "judge_output": "Rating: 6"}\n{"index": 1, "judge_outp')
    with pytest.raises(BadBenchmarkFile, match="no judge output for 6 of 8"):
        read_judgements(path, 8)  # the cut line is dropped: 1 is unjudged with 2..7
    assert read_judgements(path, 2) == {0: "Rating: 6", 1: "Rating: 2"}
    assert path.read_text().endswith('"Rating: 6"}\n')  # opening the log cut the partial line off


def test_missing_judgements_file_names_it(tmp_path):
    with pytest.raises(MissingBenchmarkFile, match="nope.jsonl"):
        read_judgements(tmp_path / "nope.jsonl", 8)


def test_client_retries_5xx_then_succeeds(server_factory):
    server = server_factory(lambda n, body, headers: (503, "busy") if n <= 2 else (200, "Rating: 3"))
    client = ChatClient(settings(server.url, max_retries=3))
    assert client.complete("hello") == "Rating: 3"
    assert len(server.requests) == 3 and server.requests[0]["path"] == "/v1/chat/completions"
    assert server.requests[0]["body"]["model"] == "judge"


def test_client_gives_up_after_its_retries(server_factory):
    server = server_factory(lambda n, body, headers: (500, "down"))
    with pytest.raises(ChatError, match="no answer after 3 tries"):
        ChatClient(settings(server.url, max_retries=2)).complete("hello")
    assert len(server.requests) == 3


def test_client_4xx_is_a_clear_error_without_the_key(server_factory, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-very-secret")
    server = server_factory(lambda n, body, headers: (401, "invalid api key"))
    with pytest.raises(ChatError) as err:
        ChatClient(settings(server.url, api_key_env="MY_JUDGE_KEY", max_retries=5)).complete("hello")
    assert "HTTP 401" in str(err.value) and "invalid api key" in str(err.value)
    assert "sk-very-secret" not in str(err.value)
    assert len(server.requests) == 1  # a 4xx is not retried
    assert server.requests[0]["headers"]["Authorization"] == "Bearer sk-very-secret"


def test_judging_resumes_without_asking_or_counting_twice(tmp_path, server_factory):
    template = load_template(_mini_template(tmp_path))
    answers = {i: f"answer-{i % 7}" for i in range(8)}
    jobs = judge_jobs(template, answers)
    log_path = tmp_path / "judgements.jsonl"
    # first run: the server refuses from the 5th request on (a 400), so the run stops after 4 answers
    flaky = server_factory(lambda n, body, headers: rating_from_answer(n, body, headers) if n <= 4 else (400, "no"))
    with pytest.raises(ChatError):
        run_calls(ChatClient(settings(flaky.url, concurrency=1)), JsonlLog(log_path, "index"), jobs,
                  "judge_output", "judging")
    assert sorted(JsonlLog(log_path, "index").rows) == [0, 1, 2, 3]
    # second run: only the 4 missing questions are asked
    good = server_factory(rating_from_answer)
    made = run_calls(ChatClient(settings(good.url, concurrency=3)), JsonlLog(log_path, "index"), jobs,
                     "judge_output", "judging")
    assert made == 4 and len(good.requests) == 4
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert sorted(row["index"] for row in lines) == list(range(8))  # each question exactly once on disk
    result = mmhal_scores(template, read_judgements(log_path, 8))
    # ratings = i % 7 for i in 0..7: 0,1,2,3,4,5,6,0 -> mean 21/8; below 3: 0,1,2,0 -> 4/8
    assert result["average_score"] == 21 / 8 and result["hallucination_rate"] == 0.5
    # a third run asks nothing
    assert run_calls(ChatClient(settings(good.url)), JsonlLog(log_path, "index"), jobs, "judge_output", "j") == 0


def test_a_changed_answer_is_judged_again(tmp_path, server_factory):
    template = load_template(_mini_template(tmp_path, 2))
    server = server_factory(rating_from_answer)
    log_path = tmp_path / "j.jsonl"
    client = ChatClient(settings(server.url))
    run_calls(client, JsonlLog(log_path, "index"), judge_jobs(template, {0: "answer-1", 1: "answer-2"}), "judge_output",
              "j")
    made = run_calls(client, JsonlLog(log_path, "index"), judge_jobs(template, {0: "answer-1", 1: "answer-5"}),
                     "judge_output", "j")
    assert made == 1
    assert mmhal_scores(template, read_judgements(log_path, 2))["ratings"] == [1, 5]
