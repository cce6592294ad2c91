"""Keeping the device fed: `ahead` encodes each item on a background thread while the caller uses the previous one,
in order, with errors raised at their own position, and the trainer and the reference pass give the same numbers
through it; host copies started early are snapshots of what they were given."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from test_dpo_logps import make_world_pairs

import rlaifv.train.dpo as dpo
import rlaifv.train.reference as reference
from rlaifv.config import DPOConfig
from rlaifv.engines.transfer import to_device, to_host_later
from rlaifv.records import Pair
from rlaifv.store import ShardedStore
from rlaifv.train.dpo import read_metrics, train_dpo
from rlaifv.train.encode import ahead
from rlaifv.train.reference import compute_reference_logps, reference_store


@pytest.mark.parametrize("n", [0, 1, 2, 5])
@pytest.mark.parametrize("background", [True, False])
def test_every_item_comes_back_once_in_order(n, background):
    assert list(ahead(range(n), lambda i: i * 10, background)) == [10 * i for i in range(n)]


def test_the_next_item_is_computed_on_another_thread_while_the_caller_holds_this_one():
    caller, started, threads = threading.get_ident(), [threading.Event() for _ in range(3)], []

    def fn(i: int) -> int:
        threads.append(threading.get_ident())
        started[i].set()
        return i

    for i in ahead(range(3), fn):
        if i + 1 < 3:  # set only if item i + 1 is being encoded while the caller still holds item i
            assert started[i + 1].wait(timeout=10), f"item {i + 1} was not started ahead"
    assert len(threads) == 3 and caller not in threads


def test_without_background_it_is_a_plain_map_on_the_callers_thread():
    seen = []

    def fn(i: int) -> int:
        seen.append((i, threading.get_ident()))
        return i

    for i in ahead(range(3), fn, background=False):
        assert [j for j, _ in seen] == list(range(i + 1))  # nothing computed ahead
    assert {t for _, t in seen} == {threading.get_ident()}


def test_an_error_is_raised_at_its_own_item_after_the_ones_before():
    def fn(i: int) -> int:
        if i == 2:
            raise ValueError("item 2 is bad")
        return i

    got = []
    with pytest.raises(ValueError, match="item 2 is bad"):
        for i in ahead(range(5), fn):
            got.append(i)
    assert got == [0, 1]


@pytest.fixture()
def encode_in_background(monkeypatch):
    """The trainer and the reference pass encode on the background thread even on the CPU (where they do not)."""
    def forced(items, fn, background):
        return ahead(items, fn, background=True)

    monkeypatch.setattr(dpo, "ahead", forced)
    monkeypatch.setattr(reference, "ahead", forced)


def test_training_through_the_background_thread_gives_the_same_curve(micro_world, tmp_path, encode_in_background):
    pairs = make_world_pairs(tmp_path, 8)
    cfg = dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=3, save_steps=3,
               logging_steps=1, learning_rate=1e-3, warmup_ratio=0.0, report_to="none")
    threaded = train_dpo(pairs, micro_world.policy, tmp_path / "threaded", DPOConfig(**cfg))
    with pytest.MonkeyPatch.context() as plain:
        plain.setattr(dpo, "ahead", ahead)
        plain.setattr(reference, "ahead", ahead)
        inline = train_dpo(pairs, micro_world.policy, tmp_path / "inline", DPOConfig(**cfg),
                           ref_store_dir=tmp_path / "inline-reference")
    got, want = read_metrics(threaded["metrics"]), read_metrics(inline["metrics"])
    assert [r["step"] for r in got] == [1, 2, 3]
    for a, b in zip(got, want):
        for name in ("loss", "rewards/margins", "logps/chosen", "logps/rejected", "grad_norm"):
            assert a[name] == pytest.approx(b[name], rel=1e-5, abs=1e-6), (a["step"], name)


def test_the_reference_pass_quarantines_through_the_background_thread(micro_world, tmp_path, encode_in_background):
    root = make_world_pairs(tmp_path, 4)
    first = next(iter(ShardedStore(root / "preferences" / "pairs", Pair).read_all()))
    Path(first.image).unlink()
    cfg = DPOConfig(precompute_ref_batch_size=2)
    result = compute_reference_logps(root, micro_world.policy, cfg)
    assert (result["done"], result["quarantined"]) == (3, 1)
    quarantined = {q.record_key: q.reason for q in reference_store(root, micro_world.policy, cfg).read_quarantine()}
    assert quarantined == {first.key: f"image file not found: {first.image}"}


def test_host_copies_are_snapshots_and_device_copies_keep_values():
    source = torch.arange(6, dtype=torch.float32)
    wait = to_host_later([source, source * 2])
    source.add_(100)  # changed after the copy was started: the copy keeps the values it was given
    first, second = wait()
    assert first.tolist() == [0, 1, 2, 3, 4, 5] and second.tolist() == [0, 2, 4, 6, 8, 10]
    assert torch.equal(to_device(torch.tensor([1, 2]), "cpu"), torch.tensor([1, 2]))
