"""The world bootstrap: cached by config, atomic, rebuilt with a clear message when the cache is broken."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
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


def test_micro_batches_give_the_whole_batch_gradient(micro_config):
    # The policy's batch runs as length-sorted micro-batches to save padding; the accumulated gradient must be the
    # one forward over the whole batch gives.
    from rlaifv.world.bootstrap import collate, micro_batches, policy_examples, train_scenes
    from rlaifv.world.models import build_model, build_tokenizer

    tokenizer = build_tokenizer(micro_config.seed, micro_config.tokenizer_vocab)
    examples = policy_examples(micro_config, tokenizer, train_scenes(micro_config)[0])[:12]
    lengths = [len(e.prompt_ids) + len(e.target_ids) for e in examples]
    assert len(set(lengths)) > 1  # padding to save, or the test shows nothing
    parts = micro_batches(examples, 3)
    assert [len(p) for p in parts] == [4, 4, 4] and sorted(map(id, examples)) == sorted(id(e) for p in parts for e in p)
    assert max(len(e.prompt_ids) + len(e.target_ids) for e in parts[0]) <= min(
        len(e.prompt_ids) + len(e.target_ids) for e in parts[1])
    model = build_model(tokenizer, micro_config.policy_model, 0)
    pad = tokenizer.pad_token_id

    def gradient(groups):
        model.zero_grad()
        n_targets = sum(len(e.target_ids) for e in examples)
        total = sum(model(**collate(g, pad), num_items_in_batch=n_targets).loss for g in groups)
        total.backward()
        return total.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    whole_loss, whole = gradient([examples])
    split_loss, split = gradient(parts)
    model.zero_grad()
    assert whole_loss == pytest.approx(model(**collate(examples, pad)).loss.item(), rel=1e-5)  # the batch mean
    assert split_loss == pytest.approx(whole_loss, rel=1e-5)
    assert whole.keys() == split.keys()
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-4, atol=1e-6)
