"""Servers that misbehave, as long runs meet them: one that hangs, answers 500 and then recovers, closes the
connection in the middle of an answer, or returns logprobs without the yes/no tokens it was asked for.

A real HTTP server on 127.0.0.1 (openai_server.FaultyServer) plays the OpenAI-compatible server; each test scripts its
faults by request number.
Transient faults are retried within a bounded number of tries; a question the server cannot answer is quarantined
with the reason; a stage rerun sends only what is missing.
"""

from __future__ import annotations

import hashlib
import time

import pytest
from openai_server import NO, FaultyServer, verdict_answer
from PIL import Image

from rlaifv.config import OpenAIEngineConfig
from rlaifv.engines.openai_chat import ChatClient, ChatError, ChatSettings
from rlaifv.engines.openai_vlm import OpenAIEngine
from rlaifv.records import BadInput


def engine(server: FaultyServer, **changes) -> OpenAIEngine:
    cfg = OpenAIEngineConfig(urls=[server.url], model="labeler", concurrency=1, **({"max_retries": 2} | changes))
    return OpenAIEngine(cfg, sleep=lambda s: None)


IMAGE = Image.new("RGB", (8, 8), (200, 10, 10))


def test_a_hanging_server_times_out_and_the_retry_gets_the_answer():
    with FaultyServer(lambda n, *_: ("hang", 3.0) if n == 1 else ("ok", verdict_answer(0.8))) as server:
        start = time.monotonic()
        [(p_yes, p_no)] = engine(server, timeout_s=0.5).yes_no([IMAGE], ["Is it red?"])
        assert (p_yes, p_no) == pytest.approx((0.8, 0.2)) and len(server.requests) == 2
        assert time.monotonic() - start < 3.0  # the hung request was abandoned at its timeout


def test_a_server_that_answers_500_then_recovers_is_retried_within_the_bound():
    with FaultyServer(lambda n, *_: ("status", 500) if n <= 2 else ("ok", verdict_answer(0.3))) as server:
        [(p_yes, _)] = engine(server, max_retries=2).yes_no([IMAGE], ["Is it red?"])
        assert p_yes == pytest.approx(0.3) and len(server.requests) == 3
    with FaultyServer(lambda n, *_: ("status", 503)) as server:  # never recovers: a clear stop, bounded tries
        with pytest.raises(ChatError, match=r"no answer after 3 tries; last error: HTTP 503"):
            engine(server, max_retries=2).yes_no([IMAGE], ["Is it red?"])
        assert len(server.requests) == 3


def test_an_answer_cut_off_mid_body_is_retried():
    with FaultyServer(lambda n, *_: ("cut", verdict_answer(0.9)) if n == 1 else ("ok", verdict_answer(0.9))) as server:
        [(p_yes, _)] = engine(server).yes_no([IMAGE], ["Is it red?"])
        assert p_yes == pytest.approx(0.9) and len(server.requests) == 2
    chat = {"choices": [{"message": {"role": "assistant", "content": "Rating: 5"}}]}
    with FaultyServer(lambda n, *_: ("cut", chat) if n < 3 else ("ok", chat)) as server:
        client = ChatClient(ChatSettings(url=server.url, model="judge", max_retries=3), sleep=lambda s: None)
        assert client.complete("Rate it.") == "Rating: 5" and len(server.requests) == 3


def test_logprobs_without_the_asked_tokens_quarantine_that_question_alone():
    def behave(n, path, body):
        missing = "blue" in body["messages"][0]["content"][1]["text"]
        return "ok", verdict_answer(0.7, drop=(NO,) if missing else ())

    with FaultyServer(behave) as server:
        got = engine(server).yes_no([IMAGE, IMAGE], ["Is it red?", "Is it blue?"])
        assert got[0] == pytest.approx((0.7, 0.3))
        assert isinstance(got[1], BadInput) and "lack the yes/no token ids" in str(got[1]) and str(NO) in str(got[1])


def test_top_logprobs_with_neither_yes_nor_no_are_no_verdict():
    answer = verdict_answer(0.5, ids=False)
    answer["choices"][0]["logprobs"]["content"][0]["top_logprobs"] = [{"token": "Maybe", "logprob": -0.1}]
    with FaultyServer(lambda *_: ("ok", answer), tokenize=False) as server:  # verdicts read by token text
        [got] = engine(server).yes_no([IMAGE], ["Is it red?"])
        assert isinstance(got, BadInput) and "neither yes nor no" in str(got)


def test_a_judge_stage_rerun_after_a_dead_server_sends_only_what_is_missing(tmp_path):
    from rlaifv.config import JudgeConfig
    from rlaifv.feedback.judge import run_judge
    from rlaifv.records import Claim, Prompt, Verdict
    from rlaifv.store import ShardedStore

    IMAGE.save(tmp_path / "img.png")
    sha = hashlib.sha256((tmp_path / "img.png").read_bytes()).hexdigest()
    prompts = ShardedStore(tmp_path / "prompts", Prompt)
    with prompts.writer() as w:
        for i in range(4):
            w.add(Prompt(f"p{i}", str(tmp_path / "img.png"), None, sha, f"Describe {i}.", "test", {}))
    claims = [Claim(f"p{i}", 0, 0, f"The thing {i} is red.", f"Is the thing {i} red?") for i in range(4)]
    out = ShardedStore(tmp_path / "verdicts", Verdict, 1)
    from rlaifv.prompts import load_image

    dead_after = 2
    with FaultyServer(lambda n, *_: ("ok", verdict_answer(0.6)) if n <= dead_after else ("status", 503)) as server:
        with pytest.raises(ChatError):
            run_judge(prompts, claims, out, JudgeConfig(prompts_per_batch=1), engine(server, max_retries=1),
                      load_image)
    kept = {v.key for v in out.read()}
    assert len(kept) == dead_after
    with FaultyServer(lambda n, *_: ("ok", verdict_answer(0.6))) as server:
        result = run_judge(prompts, claims, out, JudgeConfig(prompts_per_batch=1), engine(server), load_image)
        asked = [b["messages"][0]["content"][1]["text"] for b in server.requests]
    assert len(asked) == 4 - dead_after and not any(f"thing {i} " in q for q in asked for i in range(dead_after))
    assert result["done"] == 4 - dead_after and len(out) == 4 and kept <= {v.key for v in out.read()}
