"""The world bootstrap: cached by config, atomic, rebuilt with a clear message when the cache is broken."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from rlaifv.config import WorldConfig
from rlaifv.world.bootstrap import MANIFEST, bootstrap, cache_key


def test_bootstrap_trains_both_models_and_reuses_the_cache(micro_world, micro_config, capsys):
    assert (micro_world.policy / "model.safetensors").exists()
    assert (micro_world.labeler / "model.safetensors").exists()
    train = micro_world.manifest["train"]
    for role in ("policy", "labeler"):
        assert train[role]["steps"] > 0
        assert train[role]["final_loss"] < 6.0  # it learned something from a random start (ln V ~ 6.2)
    start = time.perf_counter()
    again = bootstrap(micro_config)
    assert time.perf_counter() - start < 10
    assert again.root == micro_world.root and again.manifest == micro_world.manifest
    assert not again.built


def test_cache_key_depends_on_config_and_seed(micro_config):
    assert cache_key(micro_config) == cache_key(WorldConfig.preset("micro"))
    assert cache_key(micro_config) != cache_key(micro_config.model_copy(update={"seed": 1}))
    assert cache_key(WorldConfig()) != cache_key(micro_config)


def test_bootstrap_is_deterministic(micro_world, micro_config, tmp_path, monkeypatch):
    monkeypatch.setenv("RLAIFV_CACHE", str(tmp_path))
    other = bootstrap(micro_config)
    assert other.root != micro_world.root
    for role in ("policy", "labeler"):
        a = load_file(micro_world.root / role / "model.safetensors")
        b = load_file(other.root / role / "model.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), role


def test_corrupt_cache_is_reported_and_rebuilt(micro_config, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RLAIFV_CACHE", str(tmp_path))
    first = bootstrap(micro_config)
    (first.policy / "model.safetensors").write_bytes(b"not a safetensors file")
    rebuilt = bootstrap(micro_config)
    err = capsys.readouterr().err
    assert "unusable" in err and "rebuilding" in err
    assert load_file(rebuilt.policy / "model.safetensors")  # loads again
    (rebuilt.root / MANIFEST).write_text("{ truncated")
    again = bootstrap(micro_config)
    assert json.loads((again.root / MANIFEST).read_text())["key"] == cache_key(micro_config)


def test_killed_bootstrap_leaves_nothing_a_later_run_picks_up(micro_config, tmp_path):
    env = {**os.environ, "RLAIFV_CACHE": str(tmp_path)}
    code = (
        "from rlaifv.config import WorldConfig; from rlaifv.world.bootstrap import bootstrap; "
        "bootstrap(WorldConfig.preset('micro'))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.DEVNULL)
    world = tmp_path / "world"
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.name.startswith(".tmp-") for p in world.glob("*")):
        time.sleep(0.05)
    time.sleep(0.5)
    proc.kill()
    proc.wait()
    final = world / cache_key(micro_config)
    assert not final.exists(), "a killed build must never appear under its final name"
    # the next run builds a complete world and clears the leftovers
    os.environ["RLAIFV_CACHE"], saved = str(tmp_path), os.environ.get("RLAIFV_CACHE")
    try:
        models = bootstrap(micro_config)
    finally:
        if saved is not None:
            os.environ["RLAIFV_CACHE"] = saved
    assert (models.root / MANIFEST).exists()
    assert not any(p.name.startswith(".tmp-") for p in world.glob("*"))
