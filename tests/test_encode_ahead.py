"""Keeping the device fed: `ahead` encodes each item on a background thread while the caller uses the previous one,
in order, with errors raised at their own position, and the trainer and the reference pass give the same numbers
through it; host copies started early are snapshots of what they were given."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from test_dpo_logps import make_world_pairs

import rlaifv.logps.reference as reference
import rlaifv.train.dpo as dpo
from rlaifv.config import DPOConfig
from rlaifv.engines.transfer import OneBehind, to_device, to_host_later
from rlaifv.logps.encode import ahead
from rlaifv.logps.reference import compute_reference_logps, reference_store
from rlaifv.records import Pair
from rlaifv.store import ShardedStore
from rlaifv.train.dpo import read_metrics, train_dpo


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


def test_it_runs_at_most_one_item_ahead_and_stops_when_closed():
    computed = []

    def fn(i: int) -> int:
        computed.append(i)
        return i

    items = ahead(range(10), fn)
    assert [next(items), next(items)] == [0, 1]
    items.close()  # the consumer stops early: the worker is shut down, nothing more is encoded
    assert computed in ([0, 1], [0, 1, 2])


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


def test_host_copies_are_snapshots():
    source = torch.arange(6, dtype=torch.float32)
    wait = to_host_later([source, source * 2])
    source.add_(100)  # changed after the copy was started: the copy keeps the values it was given
    first, second = wait()
    assert first.tolist() == [0, 1, 2, 3, 4, 5] and second.tolist() == [0, 2, 4, 6, 8, 10]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_copies_to_and_from_a_gpu_wait_for_their_own_work_only():
    device = torch.device("cuda", torch.cuda.device_count() - 1)  # the last GPU: not the current one when several
    x = to_device(torch.arange(4096, dtype=torch.float32).reshape(64, 64), device)
    y = x @ x  # queued before the copy: the copy must wait for it
    wait = to_host_later([y.sum(), y[0, :3]])
    z = torch.randn(4096, 4096, device=device)
    for _ in range(8):  # queued after the copy: reading must not need it
        z = z @ z
    total, head = wait()
    want = torch.arange(4096, dtype=torch.float64).reshape(64, 64)
    want = want @ want
    assert total.item() == pytest.approx(want.sum().item(), rel=1e-5)
    assert head.tolist() == pytest.approx(want[0, :3].tolist(), rel=1e-5)


def test_one_behind_finishes_each_step_one_late_and_the_last_on_the_way_out():
    finished = []
    with OneBehind(finished.append) as behind:
        behind.push((1,))
        assert finished == []
        behind.push((2,))
        assert finished == [1]
        behind.flush()
        assert finished == [1, 2]
        behind.push((3,))
    assert finished == [1, 2, 3]

    finished.clear()
    with pytest.raises(RuntimeError, match="step 3 failed"), OneBehind(finished.append) as behind:
        behind.push((1,))
        behind.push((2,))
        raise RuntimeError("step 3 failed")
    assert finished == [1, 2]  # the last finished step is still finished before the error propagates


def test_one_behind_does_not_retry_a_step_whose_finishing_failed():
    finished = []

    def finish(step: int) -> None:
        if step == 1:
            raise ValueError("callback stopped the run")
        finished.append(step)

    with pytest.raises(ValueError, match="callback stopped"), OneBehind(finish) as behind:
        behind.push((1,))
        behind.push((2,))  # finishing step 1 raises here; step 2 is dropped with it
    assert finished == []


def _train_recording(pairs, policy, out: Path, seen: list, steps: int, save_steps: int, logging_steps: int,
                     on_step=None) -> None:
    """Train, recording (step, whether its checkpoint exists yet, loss) at every callback."""
    def callback(step: int, metrics: dict) -> None:
        seen.append((step, (out / "checkpoints" / f"checkpoint-{step}").exists(), metrics["loss"]))
        if on_step is not None:
            on_step(step)

    cfg = DPOConfig(per_device_train_batch_size=2, max_steps=steps, save_steps=save_steps,
                    logging_steps=logging_steps, learning_rate=1e-3, warmup_ratio=0.0, report_to="none")
    train_dpo(pairs, policy, out, cfg, callback=callback)


def test_every_step_is_called_back_once_in_order_before_its_checkpoint(micro_world, tmp_path):
    pairs = make_world_pairs(tmp_path, 8)
    seen = []
    _train_recording(pairs, micro_world.policy, tmp_path / "run", seen, steps=5, save_steps=2, logging_steps=2)
    assert [step for step, _, _ in seen] == [1, 2, 3, 4, 5]
    assert not any(exists for _, exists, _ in seen)  # each callback runs before its step's checkpoint is saved
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [r["step"] for r in rows] == [2, 4, 5]
    assert rows[0]["loss"] == pytest.approx((seen[0][2] + seen[1][2]) / 2, rel=1e-6)  # the window holds steps 1-2


def test_a_failing_step_still_logs_and_calls_back_the_step_before(micro_world, tmp_path):
    pairs = make_world_pairs(tmp_path, 8)
    images = [Path(r.image) for r in ShardedStore(pairs / "preferences" / "pairs", Pair).read_all()]

    def lose_images(step: int) -> None:  # step 3 cannot encode its pairs any more
        if step == 1:
            for image in images:
                image.unlink(missing_ok=True)

    out, seen = tmp_path / "run", []
    with pytest.raises(ValueError, match="can no longer be read"):
        _train_recording(pairs, micro_world.policy, out, seen, steps=4, save_steps=4, logging_steps=1,
                         on_step=lose_images)
    assert [step for step, _, _ in seen] == [1, 2]  # step 2 finished before step 3 failed: still called back
    assert [r["step"] for r in read_metrics(out / "metrics.csv")] == [1, 2]
