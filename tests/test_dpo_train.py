"""The DPO trainer on the micro world's tiny LLaVA: log 2 at step 0, what trains and what stays frozen, accumulation
equals a bigger batch, a SIGKILLed run resumes onto the same loss curve, LoRA trains and merges, and the saved model
loads with plain transformers."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_dpo_logps import make_world_pairs
from transformers import AutoModelForImageTextToText, AutoProcessor

from rlaifv.config import DPOConfig
from rlaifv.logps.encode import PairEncoder
from rlaifv.logps.packed import packed_logps
from rlaifv.preferences import load_pairs
from rlaifv.prompts import load_image
from rlaifv.train.dpo import read_metrics, train_dpo
from rlaifv.train.policy_model import vision_tower

# Batch 1 x accumulation 4, a checkpoint every 3 steps, a metrics row per step; lr high enough that 6 steps move the
# tiny model visibly, no warmup so the first step already updates.
BASE = dict(per_device_train_batch_size=1, gradient_accumulation_steps=4, max_steps=6, save_steps=3, logging_steps=1,
            learning_rate=1e-3, warmup_ratio=0.0, report_to="none")
# Continuous metrics; reward accuracy counts signs of margins that are ~1e-8 at step 0, so it is left out where the
# floats may differ in the last bits (it is compared where they must be identical).
COMPARED = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected",
            "grad_norm", "learning_rate")


@pytest.fixture(scope="module")
def world_pairs(tmp_path_factory) -> Path:
    return make_world_pairs(tmp_path_factory.mktemp("dpo-train"), 8)


@pytest.fixture(scope="module")
def baseline(world_pairs, micro_world, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("baseline") / "run"
    return train_dpo(world_pairs, micro_world.policy, out, DPOConfig(**BASE))


def _assert_same_curve(rows: list[dict], want: list[dict], atol: float, names=COMPARED) -> None:
    assert [r["step"] for r in rows] == [r["step"] for r in want]
    for got, expected in zip(rows, want):
        for name in names:
            # relative 1e-6 too: summed log-probs are ~-200, where fp32 resolves ~1e-5. The gradient norm sums the
            # squares of every gradient, whose float order varies between runs by a few 1e-6 (seen: 2.2e-6)
            rel = 1e-5 if name == "grad_norm" else 1e-6
            assert got[name] == pytest.approx(expected[name], rel=rel, abs=atol), (got["step"], name)


def _weights(folder: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


def test_first_loss_is_log_2_and_every_trainable_weight_moves_but_the_vision_tower(baseline, micro_world):
    rows = read_metrics(baseline["metrics"])
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference before the first update
    assert rows[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert rows[-1]["loss"] != pytest.approx(math.log(2), abs=1e-3)
    assert baseline["steps"] == 6 and baseline["n_train"] == 8 and baseline["quarantined"] == {}
    trained = AutoModelForImageTextToText.from_pretrained(baseline["model"])  # loads unchanged
    AutoProcessor.from_pretrained(baseline["model"])
    base = AutoModelForImageTextToText.from_pretrained(micro_world.policy)
    tower = {id(p) for p in vision_tower(base).parameters()}
    moved = dict(trained.named_parameters())
    assert len(tower) > 0
    for name, before in base.named_parameters():
        if id(before) in tower:
            assert torch.equal(moved[name], before), f"{name} is in the frozen vision tower but changed"
        else:
            assert not torch.equal(moved[name], before), f"{name} is trainable but did not change"


def test_batch_1_with_accumulation_4_equals_batch_4(baseline, world_pairs, micro_world, tmp_path):
    batch4 = train_dpo(world_pairs, micro_world.policy, tmp_path / "b4",
                       DPOConfig(**{**BASE, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1}))
    _assert_same_curve(read_metrics(batch4["metrics"]), read_metrics(baseline["metrics"]), atol=1e-5)
    got, want = _weights(batch4["model"]), _weights(baseline["model"])
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=0)


KILLED_RUN = """
import json, os, signal, sys
import torch
torch.set_num_threads(int(os.environ["RLAIFV_TEST_THREADS"]))  # the parent's: the same float order as its runs
from rlaifv.config import DPOConfig
from rlaifv.train.dpo import train_dpo

def die(step, metrics):
    if step == 5:  # after step 5 was logged; the newest checkpoint is step 3's
        os.kill(os.getpid(), signal.SIGKILL)

pairs, policy, out, cfg = sys.argv[1:]
train_dpo(pairs, policy, out, DPOConfig.model_validate_json(cfg), callback=die)
"""


def test_run_killed_by_sigkill_resumes_onto_the_same_loss_curve(baseline, world_pairs, micro_world, tmp_path):
    out, cfg = tmp_path / "killed", DPOConfig(**BASE)
    child = subprocess.run([sys.executable, "-c", KILLED_RUN, str(world_pairs), str(micro_world.policy), str(out),
                            cfg.model_dump_json()], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "RLAIFV_TEST_THREADS": str(torch.get_num_threads())})
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert [r["step"] for r in read_metrics(out / "metrics.csv")] == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-3"]
    resumed = train_dpo(world_pairs, micro_world.policy, out, cfg)
    assert resumed["resumed_from_step"] == 3
    want = read_metrics(baseline["metrics"])
    _assert_same_curve(read_metrics(resumed["metrics"]), want, atol=1e-6, names=sorted(want[0]))
    got, want = _weights(resumed["model"]), _weights(baseline["model"])
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=0)


def test_a_finished_run_is_not_redone_and_another_config_is_refused(baseline, world_pairs, micro_world):
    out = Path(baseline["out_dir"])
    stamp = (out / "summary.json").stat().st_mtime_ns
    assert train_dpo(world_pairs, micro_world.policy, out, DPOConfig(**BASE)) == baseline
    assert (out / "summary.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="another config(.|\n)*config.beta: 0.1 -> 0.5"):
        train_dpo(world_pairs, micro_world.policy, out, DPOConfig(**{**BASE, "beta": 0.5}))


def test_a_run_stopped_early_is_the_whole_schedules_first_steps(baseline, world_pairs, micro_world, tmp_path):
    # stop_fraction 0.5 of 6 steps: steps 1-3 under the 6-step schedule, so the learning rate of each step and the
    # checkpoint at step 3 are the whole run's
    stopped = train_dpo(world_pairs, micro_world.policy, tmp_path / "half", DPOConfig(**BASE, stop_fraction=0.5))
    assert stopped["steps"] == 3 and stopped["schedule_steps"] == 6
    assert [Path(c).parent.name for c in stopped["checkpoints"]] == ["checkpoint-3"]
    want = read_metrics(baseline["metrics"])[:3]
    _assert_same_curve(read_metrics(stopped["metrics"]), want, atol=1e-6, names=sorted(want[0]))
    whole_at_3 = _weights(Path(baseline["out_dir"]) / "checkpoints" / "checkpoint-3" / "model")
    got = _weights(stopped["model"])
    for name in whole_at_3:
        torch.testing.assert_close(got[name], whole_at_3[name], atol=1e-6, rtol=0)


def test_lora_trains_and_merges_into_a_plain_model(world_pairs, micro_world, tmp_path):
    cfg = DPOConfig(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0, per_device_train_batch_size=4,
                    max_steps=3, logging_steps=1, learning_rate=1e-2, warmup_ratio=0.0, report_to="none")
    summary = train_dpo(world_pairs, micro_world.policy, tmp_path / "lora", cfg)
    rows = read_metrics(summary["metrics"])
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6) and rows[-1]["rewards/margins"] > 0
    merged = AutoModelForImageTextToText.from_pretrained(summary["model"]).eval()
    assert not any("lora" in name for name in merged.state_dict())
    base = AutoModelForImageTextToText.from_pretrained(micro_world.policy)
    changed = [n for n, p in base.named_parameters() if not torch.equal(p, dict(merged.named_parameters())[n])]
    assert changed and not any("vision_tower" in n for n in changed)

    from peft import PeftModel

    adapted = PeftModel.from_pretrained(base, summary["adapter"]).eval()
    processor = AutoProcessor.from_pretrained(summary["model"])
    encoder = PairEncoder(processor, None)
    pairs = [encoder(e, load_image(e.prompt)) for e in load_pairs(world_pairs).examples[:3]]
    with torch.no_grad():
        want = packed_logps(adapted, pairs, processor.tokenizer.pad_token_id)
        got = packed_logps(merged, pairs, processor.tokenizer.pad_token_id)
    torch.testing.assert_close(got.chosen, want.chosen, atol=1e-4, rtol=0)
    torch.testing.assert_close(got.rejected, want.rejected, atol=1e-4, rtol=0)


def test_config_rules():
    assert DPOConfig().learning_rate == 5e-7 and DPOConfig(use_peft=True).learning_rate == 1e-5
    with pytest.raises(ValueError, match="lora_r set but use_peft is false"):
        DPOConfig(lora_r=8)
    with pytest.raises(ValueError, match="max_steps must be -1"):
        DPOConfig(max_steps=0)
    with pytest.raises(ValueError, match="extra"):
        DPOConfig.model_validate({"betta": 0.1})
    dumped = json.loads(DPOConfig(use_peft=True, lora_r=8).model_dump_json())
    assert DPOConfig.model_validate(dumped) == DPOConfig(use_peft=True, lora_r=8)


def test_every_config_field_is_documented():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    for name, field in DPOConfig.model_fields.items():
        assert field.description, f"{name} has no description"
        assert f"`{name}`" in docs, f"docs/training.md does not mention {name}"


def test_a_corrupt_checkpoint_is_set_aside_and_recomputed(baseline, world_pairs, micro_world, tmp_path):
    """A finished run whose last checkpoint lost a byte: loading it is refused naming the file; asking for the run
    again moves it aside, resumes from the checkpoint before it and ends on the uninterrupted run's curve and
    weights, with a sound checkpoint in its place."""
    import shutil

    from rlaifv.files import CorruptFile, verify_published, verify_tree

    out = tmp_path / "run"
    shutil.copytree(baseline["out_dir"], out)
    weights = out / "checkpoints" / "checkpoint-6" / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptFile, match=str(weights)):
        verify_published(weights.parent)  # what every model load does first (engines.loading)

    again = train_dpo(world_pairs, micro_world.policy, out, DPOConfig(**BASE))
    assert again["resumed_from_step"] == 3
    assert (out / "checkpoints" / "corrupt" / "checkpoint-6").is_dir()
    verify_tree(out / "checkpoints" / "checkpoint-6")
    verify_published(out / "model")
    want = read_metrics(baseline["metrics"])
    _assert_same_curve(read_metrics(again["metrics"]), want, atol=1e-6)
    got, expected = _weights(again["model"]), _weights(baseline["model"])
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=0)
