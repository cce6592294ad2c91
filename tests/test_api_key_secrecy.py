"""An API key reaches the server it is for and nothing else: `rlaifv collect` against a real OpenAI-compatible
server (openai_server.FaultyServer) with the key in the environment sends it as `Authorization: Bearer`, and no file
the run writes (Parquet shards, JSON, YAML, reports, logs) nor its stdout or stderr holds it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from openai_server import FaultyServer, verdict_answer
from PIL import Image

KEY_ENV = "RLAIFV_TEST_SERVER_KEY"
KEY = "sk-rlaifv-canary-7f3a9c1e5b2d"  # distinctive: found only where it was copied


def _answer(n, path, body) -> tuple[str, dict]:
    """Sampling requests (they ask for n choices) get two different answers; verdicts favour the red one."""
    if "n" in body:
        texts = ["A red square on white.", "A blue square on white."]
        choices = [{"index": i, "message": {"role": "assistant", "content": texts[i % 2]}, "finish_reason": "stop",
                    "logprobs": {"content": [{"token": "x", "logprob": -0.5}] * 6}} for i in range(body["n"])]
        return "ok", {"choices": choices}
    return "ok", verdict_answer(0.9 if "red" in json.dumps(body["messages"]) else 0.2)


def _holds_key(data: bytes) -> bool:
    return KEY.encode() in data or KEY.encode("utf-16-le") in data


def test_a_served_run_sends_the_key_and_writes_it_nowhere(tmp_path):
    (tmp_path / "imgs").mkdir()
    for i, colour in enumerate([(200, 10, 10), (10, 10, 200)]):
        Image.new("RGB", (16, 16), colour).save(tmp_path / "imgs" / f"{i}.png")
    with (tmp_path / "prompts.jsonl").open("w") as f:
        for i in range(2):
            f.write(json.dumps({"id": f"p{i}", "image": f"imgs/{i}.png", "question": "What is shown?"}) + "\n")
    out = tmp_path / "run"
    with FaultyServer(_answer) as server:
        served = {"kind": "openai", "urls": [server.url], "model": "vlm", "api_key_env": KEY_ENV, "concurrency": 2}
        config = {"sample": {"policy": served, "n": 4, "max_new_tokens": 16, "temperature": 1.0},
                  "judge": {"labeler": served, "mode": "holistic"}}
        (tmp_path / "collect.yaml").write_text(json.dumps(config))  # JSON is YAML
        done = subprocess.run(
            [sys.executable, "-m", "rlaifv.cli", "collect", "--prompts", str(tmp_path / "prompts.jsonl"),
             "--out", str(out), "--config", str(tmp_path / "collect.yaml"), "--json"],
            capture_output=True, timeout=300, env={**os.environ, KEY_ENV: KEY}, cwd=tmp_path)
        export = subprocess.run(
            [sys.executable, "-m", "rlaifv.cli", "export", "--out", str(out), "--to", str(tmp_path / "pairs.parquet")],
            capture_output=True, timeout=300, env={**os.environ, KEY_ENV: KEY}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert export.returncode == 0, export.stderr.decode()[-3000:]
    summary = json.loads(done.stdout)
    assert summary["stages"]["pairs"]["records"] > 0  # the run went through every stage, to pairs

    # The key was sent, on every request (sampling, verdicts and /tokenize): the check below has something to find.
    assert server.headers and all(h.get("Authorization") == f"Bearer {KEY}" for h in server.headers)

    for stream in (done.stdout, done.stderr, export.stdout, export.stderr):
        assert not _holds_key(stream)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in written) and any(p.name.endswith((".yaml", ".json")) for p in written)
    leaks = [str(p.relative_to(tmp_path)) for p in written if _holds_key(p.read_bytes())]
    assert not leaks
    # the environment variable's name is recorded (a rerun needs it); its value is not
    assert any(KEY_ENV.encode() in p.read_bytes() for p in written)
