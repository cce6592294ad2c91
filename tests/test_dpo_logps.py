"""Training data and log-probs on the micro world's tiny LLaVA: every pair format reads the same, bad pairs are
quarantined with a reason, the packed shared-prefix log-probs equal two separate sequences, the DPO loss matches a
hand computation, and the reference pass resumes."""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from rlaifv.config import DPOConfig
from rlaifv.feedback.export import TRL_SCHEMA, export_rlaifv_dataset, export_trl
from rlaifv.logps.encode import PairEncoder, context_length
from rlaifv.logps.packed import ResponseLogps, packed_logps, separate_logps
from rlaifv.logps.reference import RefLogps, compute_reference_logps, read_reference, reference_store
from rlaifv.preferences import LoadedPairs, load_pairs
from rlaifv.prompts import ingest_prompts, load_image, scene_of, write_world_prompts
from rlaifv.records import Pair, Prompt
from rlaifv.store import ShardedStore
from rlaifv.train.loss import dpo_objective, sigmoid_dpo_loss
from rlaifv.train.policy_model import enable_checkpointing
from rlaifv.world.language import describe, noisy_caption, true_mentions

LONG = " ".join(["A small red ball is at the top."] * 40)  # ~320 tokens: past the micro models' 256 positions


def make_world_pairs(root: Path, n: int, seed: int = 0) -> Path:
    """A collect folder (prompts + preferences/pairs) of n world scenes: the true description is chosen, the
    captioner's noisy one (which adds co-occurring objects) rejected."""
    write_world_prompts(seed, "prompts", n, root / "prompts.jsonl")
    prompts = ShardedStore(root / "fb" / "prompts", Prompt)
    ingest_prompts(root / "prompts.jsonl", prompts)
    rng = np.random.default_rng(seed)
    with ShardedStore(root / "fb" / "preferences" / "pairs", Pair).writer() as writer:
        for p in prompts.read():
            scene = scene_of(p)
            chosen, rejected = describe(true_mentions(scene), rng), noisy_caption(scene, rng)
            if chosen == rejected:
                rejected += " There is a kite in the sky."
            writer.add(Pair(p.prompt_id, p.image, p.question, chosen, rejected, 0.0, -1.0, 0, None, None, {}))
    return root / "fb"


@pytest.fixture(scope="module")
def world_pairs(tmp_path_factory) -> Path:
    return make_world_pairs(tmp_path_factory.mktemp("dpo-data"), 8)


@pytest.fixture(scope="module")
def policy(micro_world):
    model = AutoModelForImageTextToText.from_pretrained(micro_world.policy, dtype=torch.float32)
    return model, AutoProcessor.from_pretrained(micro_world.policy)


def _encode(policy, examples):
    model, processor = policy
    encoder = PairEncoder(processor, context_length(model.config))
    return [encoder(e, load_image(e.prompt)) for e in examples]


# -- data ----------------------------------------------------------------------------------------------------------


def _content(loaded: LoadedPairs) -> list[tuple]:
    return [(e.prompt.question, e.chosen, e.rejected, e.prompt.image_sha256, e.messages, e.formatted)
            for e in loaded.examples]


def test_both_exports_and_a_datasets_folder_read_back_as_the_pair_store(world_pairs, tmp_path):
    import datasets

    store = load_pairs(world_pairs)
    assert len(store.examples) == 8 and not store.bad
    pairs, prompts = ShardedStore(world_pairs / "preferences" / "pairs", Pair), ShardedStore(world_pairs / "prompts",
                                                                                            Prompt)
    trl = load_pairs(export_trl(pairs, prompts, tmp_path / "trl.parquet"))
    rlaifv = load_pairs(export_rlaifv_dataset(pairs, prompts, tmp_path / "rlaifv.parquet"))
    datasets.Dataset.from_parquet(str(tmp_path / "trl.parquet")).save_to_disk(str(tmp_path / "trl_ds"))
    saved = load_pairs(tmp_path / "trl_ds")
    assert _content(trl) == _content(rlaifv) == _content(saved) == _content(store)
    assert [e.key for e in trl.examples] == [e.key for e in rlaifv.examples] == [e.key for e in saved.examples]
    assert not (trl.bad or rlaifv.bad or saved.bad)


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (96, 96), color).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_rows_of_a_trl_file_come_back_with_reasons(tmp_path):
    def row(image: bytes, chosen: str, rejected: str = "No.") -> dict:
        msg = [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "What?"}]}]
        return {"images": [{"bytes": image, "path": None}], "prompt": msg,
                "chosen": [{"role": "assistant", "content": [{"type": "text", "text": chosen}]}],
                "rejected": [{"role": "assistant", "content": [{"type": "text", "text": rejected}]}]}

    good = _png((255, 0, 0))
    rows = [row(good, "A red square."), row(b"not a png", "Hm."), row(good, "   "), row(good, "Same.", "Same."),
            row(good, "A red square.")]
    pq.write_table(pa.Table.from_pylist(rows, schema=TRL_SCHEMA), tmp_path / "p.parquet")
    loaded = load_pairs(tmp_path / "p.parquet")
    assert [e.chosen for e in loaded.examples] == ["A red square."]
    reasons = {key: reason for key, reason, _ in loaded.bad}
    assert reasons["row-1"].startswith("undecodable image")
    assert reasons["row-2"] == "empty response: chosen is empty"
    assert reasons["row-3"].startswith("identical responses")
    assert reasons[f"{loaded.examples[0].key}@row-4"].startswith("duplicate pair")
    assert loaded.examples[0].prompt.image_sha256 == hashlib.sha256(good).hexdigest()


def test_missing_image_and_overlong_response_are_quarantined_with_reasons(micro_world, tmp_path):
    root = make_world_pairs(tmp_path, 4)
    store = ShardedStore(root / "preferences" / "pairs", Pair)
    first, second, *_ = store.read_all()
    Path(first.image).unlink()  # the image of pair 0 is gone
    with store.writer() as writer:  # a pair whose chosen response cannot fit the model's context
        writer.add(Pair(second.prompt_id, second.image, second.question, LONG, "A ball.", 0.0, -1.0, 0, None, None,
                        {}))
    cfg = DPOConfig(precompute_ref_batch_size=2)
    result = compute_reference_logps(root, micro_world.policy, cfg)
    assert (result["done"], result["quarantined"]) == (3, 2)
    quarantined = {q.record_key: q.reason for q in reference_store(root, micro_world.policy, cfg).read_quarantine()}
    assert quarantined[first.key] == f"image file not found: {first.image}"
    long_key = Pair.key_of({"prompt_id": second.prompt_id, "chosen": LONG, "rejected": "A ball."})
    assert quarantined[long_key].startswith("too long: prompt ") and "> 256 (the model's context" in \
        quarantined[long_key]
    again = compute_reference_logps(root, micro_world.policy, cfg)  # nothing left to do or to quarantine
    assert (again["done"], again["skipped"], again["quarantined"]) == (0, 5, 0)  # 3 stored + 2 quarantined


# -- log-probs ----------------------------------------------------------------------------------------------------


def test_encoded_pair_is_the_processor_s_own_full_sequence(world_pairs, policy):
    model, processor = policy
    example = load_pairs(world_pairs).examples[0]
    [pair] = _encode(policy, [example])
    _, chosen_text, rejected_text = PairEncoder(processor, None).texts(example)
    for text, response in ((chosen_text, pair.chosen_ids), (rejected_text, pair.rejected_ids)):
        full = processor(text=[text], images=[load_image(example.prompt)])["input_ids"][0]
        assert list(full) == pair.prompt_ids + response
    assert pair.chosen_ids[-1] == processor.tokenizer.eos_token_id  # the end of the turn is learned too


def test_shared_prefix_logps_equal_separate_sequences(world_pairs, policy):
    model, processor = policy
    pairs = _encode(policy, load_pairs(world_pairs).examples[:4])
    assert len({len(p.chosen_ids) for p in pairs}) > 1  # rows of different lengths: padding is exercised
    pad = processor.tokenizer.pad_token_id
    with torch.no_grad():
        packed, separate = packed_logps(model.eval(), pairs, pad), separate_logps(model, pairs, pad)
    torch.testing.assert_close(packed.chosen, separate.chosen, atol=1e-4, rtol=0)
    torch.testing.assert_close(packed.rejected, separate.rejected, atol=1e-4, rtol=0)
    assert packed.chosen_tokens.tolist() == [len(p.chosen_ids) for p in pairs]
    assert (packed.chosen < 0).all() and not torch.allclose(packed.chosen, packed.rejected)


def test_packed_logps_under_gradient_checkpointing_give_the_same_loss_and_gradients(world_pairs, micro_world):
    grads, values = [], []
    for checkpointing in (False, True):
        model = AutoModelForImageTextToText.from_pretrained(micro_world.policy, dtype=torch.float32)
        processor = AutoProcessor.from_pretrained(micro_world.policy)
        if checkpointing:
            enable_checkpointing(model)
        model.train()
        pairs = _encode((model, processor), load_pairs(world_pairs).examples[:3])
        out = packed_logps(model, pairs, processor.tokenizer.pad_token_id)
        (out.chosen - out.rejected).sum().backward()
        values.append(torch.cat([out.chosen, out.rejected]).detach())
        grads.append(model.lm_head.weight.grad.clone())
    assert model.model.language_model.gradient_checkpointing  # the second model really recomputed
    torch.testing.assert_close(values[0], values[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


# -- the loss ------------------------------------------------------------------------------------------------------


def _logps(chosen, rejected, chosen_tokens=(1, 1, 1), rejected_tokens=(1, 1, 1)) -> ResponseLogps:
    return ResponseLogps(torch.tensor(chosen), torch.tensor(rejected), torch.tensor(chosen_tokens),
                         torch.tensor(rejected_tokens))


def test_sigmoid_dpo_loss_against_a_hand_computation():
    # Pair 1: policy margin (-10) - (-12) = 2, reference margin (-11) - (-11) = 0, so the logit is 2 and the loss is
    #   -log sigmoid(0.1 * 2) = log(1 + e^-0.2) = 0.598139; rewards 0.1 * (-10 + 11) = 0.1 and 0.1 * (-12 + 11) = -0.1.
    # Pair 2: policy = reference: logit 0, loss log 2 = 0.693147, rewards 0.
    # Pair 3: policy margin -5 - (-3) = -2, reference margin 0: loss log(1 + e^0.2) = 0.798139 (= pair 1's + 0.2).
    policy = _logps([-10.0, -7.0, -5.0], [-12.0, -9.0, -3.0])
    ref = _logps([-11.0, -7.0, -4.0], [-11.0, -9.0, -4.0])
    losses, chosen_r, rejected_r = sigmoid_dpo_loss(policy.chosen, policy.rejected, ref.chosen, ref.rejected, 0.1)
    want = torch.tensor([math.log1p(math.exp(-0.2)), math.log(2), math.log1p(math.exp(0.2))])
    torch.testing.assert_close(losses, want)
    torch.testing.assert_close(chosen_r, torch.tensor([0.1, 0.0, -0.1]))
    torch.testing.assert_close(rejected_r, torch.tensor([-0.1, 0.0, 0.1]))
    _, metrics = dpo_objective(policy, ref, DPOConfig())
    assert metrics["rewards/accuracies"].tolist() == [1.0, 0.0, 0.0]  # a tie is not a win
    torch.testing.assert_close(metrics["rewards/margins"], torch.tensor([0.2, 0.0, -0.2]))


def test_averaged_log_probs_and_the_sft_term_against_a_hand_computation():
    # Pair 1 with 2 chosen and 4 rejected tokens. Averaged: policy -10/2 = -5 and -12/4 = -3, reference -11/2 = -5.5
    # and -11/4 = -2.75; logit (-5 + 3) - (-5.5 + 2.75) = 0.75, loss log(1 + e^-0.075).
    # SFT weight 0.5 adds 0.5 * (chosen NLL per token = 10 / 2 = 5) = 2.5.
    policy, ref = _logps([-10.0], [-12.0], [2], [4]), _logps([-11.0], [-11.0], [2], [4])
    averaged, _ = dpo_objective(policy, ref, DPOConfig(average_log_prob=True))
    torch.testing.assert_close(averaged, torch.tensor([math.log1p(math.exp(-0.075))]))
    with_sft, metrics = dpo_objective(policy, ref, DPOConfig(rpo_alpha=0.5))
    torch.testing.assert_close(with_sft, torch.tensor([math.log1p(math.exp(-0.2)) + 2.5]))
    torch.testing.assert_close(metrics["nll_loss"], torch.tensor([5.0]))


# -- the reference pass --------------------------------------------------------------------------------------------


def test_reference_pass_resumes_computing_only_what_is_missing(world_pairs, micro_world, tmp_path):
    loaded = load_pairs(world_pairs)
    cfg = DPOConfig(precompute_ref_batch_size=3)
    half = LoadedPairs(loaded.source, loaded.examples[:5])  # a pass that stopped after 5 of 8 pairs
    first = compute_reference_logps(half, micro_world.policy, cfg, store_dir=tmp_path / "ref")
    assert first["done"] == 5
    rest = compute_reference_logps(loaded, micro_world.policy, cfg, store_dir=tmp_path / "ref")
    assert (rest["done"], rest["skipped"]) == (3, 5)
    whole = compute_reference_logps(loaded, micro_world.policy, cfg, store_dir=tmp_path / "ref-whole")
    assert whole["done"] == 8
    resumed = read_reference(ShardedStore(tmp_path / "ref", RefLogps), loaded).logps
    fresh = read_reference(ShardedStore(tmp_path / "ref-whole", RefLogps), loaded).logps
    assert len(resumed) == 8 and resumed == fresh  # the same floats: batches are fixed, not shifted by the resume
