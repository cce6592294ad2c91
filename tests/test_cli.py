"""The command line as a user runs it: help everywhere, one JSON object on stdout with --json."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rlaifv.records import Generation
from rlaifv.store import ShardedStore

COMMANDS = [[], ["demo"], ["world"], ["world", "bootstrap"], ["world", "show"], ["world", "prompts"], ["eval"],
            ["eval", "world"], ["collect"], ["sample"], ["claims"], ["judge"], ["pairs"], ["export"],
            ["eval", "chair"], ["eval", "amber"], ["eval", "mmhal"], ["eval", "generate"], ["eval", "report"],
            ["eval", "refomb"], ["eval", "mmstar"], ["eval", "pope"], ["eval", "human"], ["eval", "human", "export"],
            ["eval", "human", "score"],
            ["train"], ["iterate"], ["bon"]]


def _run(args, env=None, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "rlaifv.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "rlaifv")
def test_every_command_has_help(cmd):
    out = _run([*cmd, "--help"])
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout and len(out.stdout.splitlines()) > 3


def test_help_loads_no_torch():
    """Every command's --help answers without importing torch: commands import what they run when they run."""
    script = ("import sys\n"
              "from typer.testing import CliRunner\n"
              "from rlaifv.cli import app\n"
              f"for cmd in {COMMANDS!r}:\n"
              "    assert CliRunner().invoke(app, [*cmd, '--help']).exit_code == 0, cmd\n"
              "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


HELP_WITHOUT_MATPLOTLIB = """
import sys
from rlaifv.cli import main
for args in ([], ["demo"], ["eval", "report"]):
    sys.argv = ["rlaifv", *args, "--help"]
    try:
        main()
    except SystemExit as done:
        assert done.code == 0, args
print(sorted(m for m in sys.modules if m.split(".")[0] == "matplotlib"))
"""


def test_help_does_not_import_matplotlib():
    # matplotlib is a dependency for the reports' charts, imported only when a chart is drawn
    out = subprocess.run([sys.executable, "-c", HELP_WITHOUT_MATPLOTLIB], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_world_show_writes_a_picture_and_json(tmp_path):
    out = _run(["world", "show", "--n", "4", "--out", str(tmp_path / "w.png"), "--json"])
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert len(data["scenes"]) == 4 and (tmp_path / "w.png").stat().st_size > 0


def test_demo_micro_end_to_end_prints_one_json_object(micro_world, micro_cache, tmp_path):
    env = {**os.environ, "RLAIFV_CACHE": micro_cache}
    out = _run(["demo", "--preset", "micro", "--workdir", str(tmp_path / "d"), "--n-test", "16", "--rounds", "0",
                "--json"], env=env)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)  # exactly one object: json.loads fails on anything extra
    assert report["seed"] == 0 and report["rounds"][0]["round"] == 0
    for key in ("chair_s", "chair_i", "cover", "attr_err"):
        assert 0.0 <= report["rounds"][0][key] <= 1.0
    assert report["rounds"][0]["mean_len"] >= 0
    assert set(report["labeler"]) == {"accuracy", "hard_negative_accuracy", "false_rejection_rate"}
    saved = json.loads((tmp_path / "d" / "report.json").read_text())
    assert saved["rounds"] == report["rounds"]
    assert "| base policy |" in (tmp_path / "d" / "report.md").read_text()


def test_eval_world_resumes_from_its_store(micro_world, micro_cache, tmp_path):
    env = {**os.environ, "RLAIFV_CACHE": micro_cache}
    args = ["eval", "world", "--policy", str(micro_world.policy), "--n", "12", "--out", str(tmp_path / "e"), "--json"]
    first = _run(args, env=env)
    assert first.returncode == 0, first.stderr
    store = ShardedStore(tmp_path / "e" / "generations", Generation)
    assert len(store) == 12 and len(store.done_keys()) == 12
    shards = sorted(p.stat().st_mtime_ns for p in store.shard_paths())
    again = _run(args, env=env)  # everything is in the store: same numbers, nothing regenerated or rewritten
    assert again.returncode == 0, again.stderr
    assert json.loads(first.stdout) == json.loads(again.stdout)
    assert sorted(p.stat().st_mtime_ns for p in store.shard_paths()) == shards
    other = _run([*args[:-1], "--split", "val"], env=env)  # other scenes into the same store: refused
    assert other.returncode == 2 and "eval.split: \"test\" -> \"val\"" in other.stderr, other.stderr
    more = _run([*args[:4], "--n", "14", *args[6:]], env=env)  # more scenes extend the store
    assert more.returncode == 0, more.stderr
    assert len(store) == 14 and store.read_config()["eval"]["n_scenes"] == 14


def test_bad_config_is_a_readable_error(tmp_path):
    bad = tmp_path / "w.yaml"
    bad.write_text("polcy_train: {}\n")
    out = _run(["world", "bootstrap", "--config", str(bad)])
    assert out.returncode != 0
    assert "polcy_train" in out.stderr and "Traceback" not in out.stderr
