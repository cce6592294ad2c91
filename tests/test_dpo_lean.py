"""The DPO step's memory savers compute what the plain code computes: chunked response log-probs (values and
gradients), the aligned block mask, LoRA without input copies (bit for bit without dropout; the same dropout
function with it, also under activation checkpointing), and a bf16 LoRA run still starts at log 2."""

from __future__ import annotations

import math

import pytest
import torch
from test_dpo_logps import make_world_pairs

from rlaifv.config import DPOConfig
from rlaifv.engines import packing
from rlaifv.logps import packed as logps_module
from rlaifv.train.dpo import read_metrics, train_dpo
from rlaifv.train.lora import LeanLoraA, _DropoutLinear, _keep_mask, lean_lora


def _plain_token_logps(logits, rows, cols, targets):
    return logits[rows, cols].float().log_softmax(-1).gather(-1, targets[:, None])[:, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_logps_match_the_plain_log_softmax_in_value_and_gradient(dtype, monkeypatch):
    monkeypatch.setattr(logps_module, "CHUNK_ELEMENTS", 3 * 50)  # 3 rows per chunk: several chunks, a short last one
    gen = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(2, 6, 50, generator=gen)).to(dtype)  # (B, K, V)
    rows = torch.tensor([0, 0, 0, 0, 1, 1, 1, 0, 1, 1])
    cols = torch.tensor([0, 0, 1, 2, 0, 0, 3, 5, 4, 5])  # (0, 0) and (1, 0) predict twice, as a prompt's last token
    targets = torch.randint(0, 50, (10,), generator=gen)
    weights = torch.randn(10, generator=gen)
    got_x, want_x = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    got = logps_module.token_logps(got_x, rows, cols, targets)
    want = _plain_token_logps(want_x, rows, cols, targets)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    tol = 1e-6 if dtype == torch.float32 else 8e-3  # bf16: the same fp32 gradient, rounded once to bf16 either way
    torch.testing.assert_close(got_x.grad.float(), want_x.grad.float(), atol=tol, rtol=0)


def test_the_block_mask_is_the_plain_rule_laid_out_in_aligned_rows():
    packs = [packing.pack([1, 2, 3], [[4, 5], [6]]), packing.pack([1, 2, 3, 4, 5], [[6, 7, 8], [9, 10]])]
    for dtype in (torch.float32, torch.bfloat16):
        mask = packing.collate_packs(packs, 0, dtype, "cpu")["attention_mask"]  # (B, 1, T, T)
        assert mask.dtype == dtype and all(s % packing.MASK_ALIGN == 0 for s in mask.stride()[:-1])
        for b, p in enumerate(packs):
            seg = p.segments + [-1] * (mask.shape[-1] - len(p))
            for i, qs in enumerate(seg):
                for j, ks in enumerate(seg):
                    allowed = i == j or (qs >= 0 and ks >= 0 and j <= i and (ks == 0 or ks == qs))
                    assert (mask[b, 0, i, j] == 0) == allowed, (b, i, j)


def test_the_mask_takes_autocasts_dtype():
    weight = torch.zeros(1)
    assert logps_module.mask_dtype(weight, torch.device("cpu")) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert logps_module.mask_dtype(weight, torch.device("cpu")) == torch.bfloat16


class _Block(torch.nn.Module):
    """Two adapted layers reading one input (like q and k) and one reading their sum."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.down = (torch.nn.Linear(32, 32, bias=False) for _ in range(3))

    def forward(self, x):
        return self.down(torch.nn.functional.silu(self.q(x)) * self.k(x))


def _adapted(dropout: float, lean: bool, seed: int = 0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = _Block().to(torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, init_lora_weights=False,
                                             target_modules=["q", "k", "down"]))
    if lean:
        assert lean_lora(model) == 3
    return model.train()


def _run(model, x, checkpoint: bool = False):
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if checkpoint:
            from torch.utils.checkpoint import checkpoint as ckpt

            out = ckpt(model, x, use_reentrant=False)
        else:
            out = model(x)
    out.float().square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), x.grad, grads


def test_lean_lora_without_dropout_is_bit_for_bit_peft():
    x = torch.randn(3, 7, 32).to(torch.bfloat16)
    want_out, want_dx, want_grads = _run(_adapted(0.0, lean=False), x)
    got_out, got_dx, got_grads = _run(_adapted(0.0, lean=True), x)
    assert torch.equal(got_out, want_out) and torch.equal(got_dx, want_dx)
    assert got_grads.keys() == want_grads.keys() and len(got_grads) == 6  # A and B of 3 layers, fp32
    for name, grad in want_grads.items():
        assert grad.dtype == torch.float32 and torch.equal(got_grads[name], grad), name


def test_the_dropout_function_is_dropout_then_linear_with_one_mask():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 16, generator=gen).to(torch.bfloat16)
    w = torch.randn(4, 16, generator=gen).to(torch.bfloat16)
    g = torch.randn(5, 4, generator=gen).to(torch.bfloat16)
    p, seed = 0.3, 1234
    got_x, got_w = x.clone().requires_grad_(), w.clone().requires_grad_()
    got = _DropoutLinear.apply(got_x, got_w, p, seed)
    got.backward(g)
    keep = _keep_mask(x, p, seed)
    assert 0 < keep.sum() < keep.numel() and torch.equal(keep, _keep_mask(x, p, seed))
    want_x, want_w = x.clone().requires_grad_(), w.clone().requires_grad_()
    want = torch.nn.functional.linear(want_x * keep * (1 / (1 - p)), want_w)
    want.backward(g)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(got_x.grad, want_x.grad, atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(got_w.grad, want_w.grad, atol=2e-2, rtol=1e-2)


def test_lean_lora_dropout_drops_and_replays_the_same_masks_under_checkpointing():
    x = torch.randn(3, 7, 32).to(torch.bfloat16)
    model = _adapted(0.5, lean=True)
    assert all(isinstance(m, LeanLoraA) and m.dropout_p == 0.5 for n, m in model.named_modules()
               if n.endswith("lora_A.default"))
    torch.manual_seed(5)
    plain = _run(model, x)
    model.zero_grad()
    torch.manual_seed(5)
    recomputed = _run(model, x, checkpoint=True)
    assert torch.equal(plain[0], recomputed[0]) and torch.equal(plain[1], recomputed[1])
    for name, grad in plain[2].items():
        assert torch.equal(recomputed[2][name], grad), name
    model.eval()  # no dropout: the output differs from the training one, which did drop
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert not torch.equal(model(x), plain[0])


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one process-wide state whose precision cannot change: start and leave it unset."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_a_bf16_lora_run_starts_at_log_2(micro_world, tmp_path, fresh_accelerator_state):
    pairs = make_world_pairs(tmp_path, 4)
    # batch 4 of 4 pairs: the reference pass and step 0 pad the same rows to the same width
    cfg = DPOConfig(use_peft=True, bf16=True, use_cpu=True, lora_r=4, lora_alpha=8, per_device_train_batch_size=4,
                    max_steps=2, save_steps=2, logging_steps=1, learning_rate=1e-2, warmup_ratio=0.0,
                    report_to="none")
    rows = read_metrics(train_dpo(pairs, micro_world.policy, tmp_path / "run", cfg)["metrics"])
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert math.isfinite(rows[1]["loss"]) and rows[1]["grad_norm"] > 0
