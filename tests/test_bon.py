"""Best-of-N with the aligned policy's reward, on the micro world's tiny LLaVA (real models, no mocks): the reward
equals a hand computation from plain forwards, the shared-prefix scoring equals one sequence per candidate, ties,
N = 1, empty and over-long answers, mean vs sum, resume after a crash, and the command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor
from typer.testing import CliRunner

import rlaifv.store as store_module
from rlaifv.config import BonConfig
from rlaifv.engines.packing import pack_bounds
from rlaifv.infer.bon import EMPTY, BonRow, Scorer, choose, rewards_of, run_bon
from rlaifv.logps.packed import group_logps, separate_group_logps
from rlaifv.pipelines.best_of_n import best_of_n, bon_stores
from rlaifv.prompts import ingest_prompts, load_image, write_world_prompts
from rlaifv.records import Candidate

torch.set_num_threads(1)
LONG = " ".join(["A small red ball is at the top."] * 40)  # ~320 tokens: past the micro models' 256 positions
TEXTS = ["A red cup is on the left.", "There is a fork.", "A big blue ball is at the top. A kite is in the sky.",
         "A cup."]


@pytest.fixture(scope="module")
def aligned(micro_world, tmp_path_factory) -> Path:
    """A stand-in for a DPO-trained policy: the micro policy with its language model nudged (seeded)."""
    path = tmp_path_factory.mktemp("aligned")
    model = AutoModelForImageTextToText.from_pretrained(micro_world.policy, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "language_model" in name:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    model.save_pretrained(path)
    AutoProcessor.from_pretrained(micro_world.policy).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def scorers(aligned, micro_world) -> tuple[Scorer, Scorer]:
    from rlaifv.config import HFEngineConfig

    return Scorer.load(HFEngineConfig(path=str(aligned))), Scorer.load(HFEngineConfig(path=str(micro_world.policy)))


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    return write_world_prompts(0, "prompts", 4, tmp_path_factory.mktemp("bon-prompts") / "prompts.jsonl")


def config(aligned: Path, reference: Path, **changes) -> BonConfig:
    base = {"policy": {"path": str(aligned)}, "reference": {"path": str(reference)}, "n": 3, "max_new_tokens": 16,
            "prompts_per_batch": 2, "candidates_per_pack": 2, "packs_per_batch": 2, "temperature": 1.0}
    return BonConfig.model_validate(base | changes)


def stores_with(root: Path, prompts_file: Path, answers: dict[int, list[str]]):
    """Stores of the file's prompts k (in file order) with the given answers: what sampling would have written."""
    s, scratch = bon_stores(root), bon_stores(root / "all")["prompts"]
    ingest_prompts(prompts_file, scratch)
    prompts = [scratch.read_all()[k] for k in answers]
    with s["prompts"].writer() as writer:
        for prompt in prompts:
            writer.add(prompt)
    with s["candidates"].writer() as writer:
        for prompt, texts in zip(prompts, answers.values()):
            writer.add_unit([Candidate(prompt.prompt_id, i, t, 0, "test", {}, 0) for i, t in enumerate(texts)])
    return s, prompts


def hand_logp(model, processor, prompt, image, answer: str) -> tuple[float, int]:
    """log p(answer | image, question) from one plain forward over the whole conversation, and its tokens."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt.question}]}]
    prompt_text = processor.apply_chat_template(messages, add_generation_prompt=True)
    full_text = processor.apply_chat_template(
        [*messages, {"role": "assistant", "content": [{"type": "text", "text": answer}]}])
    head = processor(text=[prompt_text], images=[image], return_tensors="pt")["input_ids"][0]
    enc = processor(text=[full_text], images=[image], return_tensors="pt")
    ids = enc["input_ids"][0]
    assert ids[: len(head)].tolist() == head.tolist()
    with torch.no_grad():
        logits = model(**enc).logits[0]  # (T, V)
    logps = torch.log_softmax(logits[len(head) - 1 : -1].double(), -1)  # (L, V): position t predicts t + 1
    return logps.gather(-1, ids[len(head) :, None])[:, 0].sum().item(), len(ids) - len(head)


# -- the reward ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mean", "sum", "likelihood"])
def test_reward_equals_a_hand_computation_from_plain_forwards(kind, aligned, micro_world, scorers, prompts_file,
                                                              tmp_path):
    s, prompts = stores_with(tmp_path, prompts_file, {0: TEXTS, 1: TEXTS[:2]})
    cfg = config(aligned, micro_world.policy, reward=kind, beta=0.25)
    counts = run_bon(s["prompts"], s["candidates"], s["bon"], cfg, *scorers)
    assert counts["done"] == 2
    (policy, reference), rows = scorers, {r.prompt_id: r for r in s["bon"].read()}
    for prompt in prompts:
        row, image = rows[prompt.prompt_id], load_image(prompt)
        expected = []
        for i, text in enumerate(row.texts):
            lp, tokens = hand_logp(policy.model, policy.processor, prompt, image, text)
            lr, _ = hand_logp(reference.model, reference.processor, prompt, image, text)
            assert row.n_tokens[i] == tokens
            assert row.policy_logps[i] == pytest.approx(lp, abs=1e-4)
            assert row.ref_logps[i] == pytest.approx(lr, abs=1e-4)
            ratio = 0.25 * (lp - lr) / (tokens if kind == "mean" else 1)
            expected.append(lp / tokens if kind == "likelihood" else ratio)
        assert row.rewards == pytest.approx(expected, abs=1e-4)
        assert row.chosen_idx == max(range(len(expected)), key=lambda i: expected[i])
        assert row.chosen_text == row.texts[row.chosen_idx] and row.chosen_reward == row.rewards[row.chosen_idx]
        assert row.reasons == [""] * len(row.texts) and row.reward_kind == kind


def test_prefix_shared_scoring_equals_one_sequence_per_candidate(scorers, prompts_file, tmp_path):
    policy, _ = scorers
    s = bon_stores(tmp_path)
    ingest_prompts(prompts_file, s["prompts"])
    groups = []
    for k, prompt in enumerate(s["prompts"].read_all()[:3]):
        texts = TEXTS[k:] + ["A cup is on the left and a fork is next to it."]
        group, reasons = policy.encode(prompt, load_image(prompt), texts)
        assert reasons == [""] * len(texts)
        groups.append(group)
    bounds = [pack_bounds([len(r) for r in g.responses], len(g.prefix_ids), 16) for g in groups]
    assert any(hi - lo > 2 for b in bounds for lo, hi in b)  # rows really hold several answers
    naive = separate_group_logps(policy.model, groups, policy.pad_id, batch_size=3)
    with torch.no_grad():
        for per_pack, per_batch in ((2, 2), (16, 4), (1, 1)):  # several rows per prompt, batches across prompts
            shared = group_logps(policy.model, groups, policy.pad_id, per_pack, per_batch)
            for a, b in zip(shared, naive):
                torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_mean_and_sum_rank_differently_on_a_constructed_case():
    # Answer 0: +2 nats over 2 tokens (1 per token); answer 1: +3 nats over 10 tokens (0.3 per token).
    pol, ref, tokens = [-2.0, -10.0], [-4.0, -13.0], [2, 10]
    total = rewards_of(pol, ref, tokens, 0.1, "sum")
    per_token = rewards_of(pol, ref, tokens, 0.1, "mean")
    assert total == pytest.approx([0.2, 0.3]) and per_token == pytest.approx([0.1, 0.03])
    assert choose(total) == 1 and choose(per_token) == 0  # the sum favours the long answer's larger total here
    with pytest.raises(ValueError, match="mean"):
        rewards_of(pol, ref, tokens, 0.1, "max")


def test_likelihood_needs_no_reference_and_ranks_as_with_one(aligned, micro_world, scorers, prompts_file, tmp_path):
    rows = {}
    for name, reference in (("with", scorers[1]), ("without", None)):
        s, _ = stores_with(tmp_path / name, prompts_file, {0: TEXTS, 1: TEXTS[1:]})
        cfg = config(aligned, micro_world.policy if reference else "", reward="likelihood")
        assert run_bon(s["prompts"], s["candidates"], s["bon"], cfg, scorers[0], reference)["done"] == 2
        rows[name] = s["bon"].read_all()
    for a, b in zip(rows["with"], rows["without"]):
        assert a.rewards == b.rewards and a.chosen_idx == b.chosen_idx and a.policy_logps == b.policy_logps
        assert None not in a.ref_logps and b.ref_logps == [None] * len(b.texts)
    # a constructed case: the likelihood reads only the policy, per token
    assert rewards_of([-2.0, -9.0], [None, None], [2, 10], 0.1, "likelihood") == pytest.approx([-1.0, -0.9])


def test_stored_mean_and_sum_rewards_are_the_same_log_ratios(aligned, micro_world, scorers, prompts_file, tmp_path):
    rows = {}
    for kind in ("mean", "sum"):
        s, _ = stores_with(tmp_path / kind, prompts_file, {0: TEXTS})
        run_bon(s["prompts"], s["candidates"], s["bon"], config(aligned, micro_world.policy, reward=kind), *scorers)
        rows[kind] = s["bon"].read_all()[0]
    mean, total = rows["mean"], rows["sum"]
    assert mean.policy_logps == total.policy_logps and mean.ref_logps == total.ref_logps
    assert [m * t for m, t in zip(mean.rewards, mean.n_tokens)] == pytest.approx(total.rewards, abs=1e-9)


# -- the choice ----------------------------------------------------------------------------------------------------


def test_ties_go_to_the_lowest_sample_index(aligned, micro_world, scorers, prompts_file, tmp_path):
    assert choose([1.0, 2.0, 2.0, None]) == 1
    assert choose([None, math.nan, -0.5, -0.5]) == 2
    assert choose([None]) is None and choose([]) is None
    # The policy as its own reference: every reward is exactly 0, so sample 0 wins.
    policy, _ = scorers
    s, _ = stores_with(tmp_path / "self", prompts_file, {0: TEXTS})
    run_bon(s["prompts"], s["candidates"], s["bon"], config(aligned, aligned), policy, policy)
    row = s["bon"].read_all()[0]
    assert row.rewards == [0.0] * len(TEXTS) and row.chosen_idx == 0
    # Repeated answers are scored once: equal rewards, and the first copy of the best one wins.
    texts = [TEXTS[2], TEXTS[0], TEXTS[2], TEXTS[0]]
    s, _ = stores_with(tmp_path / "dup", prompts_file, {0: texts})
    run_bon(s["prompts"], s["candidates"], s["bon"], config(aligned, micro_world.policy), *scorers)
    row = s["bon"].read_all()[0]
    assert row.rewards[0] == row.rewards[2] and row.rewards[1] == row.rewards[3] and row.rewards[0] != row.rewards[1]
    assert row.chosen_idx == (0 if row.rewards[0] > row.rewards[1] else 1)


def test_empty_and_over_long_answers_are_set_aside_never_chosen(aligned, micro_world, scorers, prompts_file,
                                                                  tmp_path):
    answers = {0: ["", LONG, TEXTS[0], "   "], 1: ["", LONG]}
    s, prompts = stores_with(tmp_path, prompts_file, answers)
    counts = run_bon(s["prompts"], s["candidates"], s["bon"], config(aligned, micro_world.policy), *scorers)
    assert (counts["done"], counts["quarantined"]) == (1, 1)
    [row] = s["bon"].read_all()
    assert row.prompt_id == prompts[0].prompt_id and row.chosen_idx == 2 and row.chosen_text == TEXTS[0]
    assert row.reasons[0] == EMPTY and row.reasons[3] == EMPTY and row.reasons[1].startswith("too long")
    assert "> 256" in row.reasons[1]
    assert [r is None for r in row.rewards] == [True, True, False, True]
    [q] = s["bon"].read_quarantine()
    assert q.record_key == prompts[1].prompt_id and q.stage == "bon"
    assert q.reason.startswith("no candidate can be scored") and EMPTY in q.reason and "too long" in q.reason
    assert json.loads(q.record)["texts"] == answers[1]
    # A rerun finds both prompts done.
    again = run_bon(s["prompts"], s["candidates"], s["bon"], config(aligned, micro_world.policy), *scorers)
    assert (again["done"], again["quarantined"]) == (0, 0)


# -- end to end ----------------------------------------------------------------------------------------------------


def bon_rows(out: Path) -> list[dict]:
    return sorted((r.to_row() for r in bon_stores(out)["bon"].read()), key=lambda r: r["prompt_id"])


def test_n_equals_one_keeps_the_only_sample_of_a_separate_sampler(aligned, micro_world, prompts_file, tmp_path):
    cfg = config(aligned, micro_world.policy, n=1, sampler={"path": str(micro_world.policy)})
    summary = best_of_n(tmp_path / "out", cfg, prompts_file)
    rows = bon_rows(tmp_path / "out")
    assert summary["scored"] + summary["quarantined"] == 4 and summary["scored"] >= 3
    for row in rows:
        assert len(row["texts"]) == 1 and row["chosen_idx"] == 0 and row["chosen_text"] == row["texts"][0]
        assert row["sampler"] == str(micro_world.policy)
    assert {c.policy for c in bon_stores(tmp_path / "out")["candidates"].read()} == {str(micro_world.policy)}
    best = [json.loads(line) for line in (tmp_path / "out" / "best.jsonl").read_text().splitlines()]
    assert [b["response"] for b in best] == [r["chosen_text"] for r in bon_rows(tmp_path / "out")]
    assert all("world" in b for b in best)  # the prompt's meta rides along


def test_a_crashed_run_resumes_to_the_uninterrupted_result(aligned, micro_world, prompts_file, tmp_path,
                                                           monkeypatch):
    cfg = config(aligned, micro_world.policy, shard_size=1)
    whole = best_of_n(tmp_path / "whole", cfg, prompts_file)
    atomic_write, written = store_module.atomic_write, []

    def crash_after_one_bon_shard(path, write):
        if path.parent.name == "shards" and path.parent.parent.name == "bon":
            if written:
                raise RuntimeError("killed")
            written.append(path)
        atomic_write(path, write)

    monkeypatch.setattr(store_module, "atomic_write", crash_after_one_bon_shard)
    with pytest.raises(RuntimeError, match="killed"):
        best_of_n(tmp_path / "run", cfg, prompts_file)
    monkeypatch.setattr(store_module, "atomic_write", atomic_write)
    assert len(bon_rows(tmp_path / "run")) == 1  # work done, work left
    resumed = best_of_n(tmp_path / "run", cfg)
    assert resumed["this_run"]["skipped"] == 1
    assert bon_rows(tmp_path / "run") == bon_rows(tmp_path / "whole")  # nothing lost, nothing twice, same floats
    assert (tmp_path / "run" / "best.jsonl").read_text() == (tmp_path / "whole" / "best.jsonl").read_text()
    assert {k: v for k, v in resumed.items() if k not in ("out", "best", "this_run")} == \
        {k: v for k, v in whole.items() if k not in ("out", "best", "this_run")}
    with pytest.raises(ValueError, match="another config(.|\n)*beta: 0.1 -> 0.2"):
        best_of_n(tmp_path / "run", config(aligned, micro_world.policy, shard_size=1, beta=0.2))


def test_the_command_writes_best_answers_and_one_json_object(aligned, micro_world, prompts_file, tmp_path):
    import typer

    from rlaifv.cli.bon import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # two commands, so typer keeps the `bon` subcommand name
    runner = CliRunner()
    out = tmp_path / "out"
    args = ["bon", "--policy", str(aligned), "--reference", str(micro_world.policy), "--prompts", str(prompts_file),
            "--n", "2", "--max-new-tokens", "12", "--reward", "sum", "--out", str(out), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["reward"] == "sum" and summary["scored"] + summary["quarantined"] == 4
    assert (out / "best.parquet").exists() and (out / "summary.json").exists()
    import pyarrow.parquet as pq

    assert pq.read_table(out / "best.parquet").num_rows == summary["scored"]
    assert len(BonRow.arrow_schema()) == len(bon_stores(out)["bon"].to_table().schema)
    missing = runner.invoke(app, ["bon", "--reference", str(micro_world.policy), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "--policy is required" in missing.output
    bad = runner.invoke(app, [*args[:-1], "--reward", "max"])
    assert bad.exit_code == 2 and "mean, sum, likelihood" in bad.output
    no_reference = ["bon", "--policy", str(aligned), "--prompts", str(prompts_file), "--n", "2", "--max-new-tokens",
                    "12", "--out", str(tmp_path / "lik"), "--json"]
    refused = runner.invoke(app, no_reference)
    assert refused.exit_code == 2 and "--reference is required with reward 'mean'" in refused.output
    alone = runner.invoke(app, [*no_reference, "--reward", "likelihood"])
    assert alone.exit_code == 0, alone.output
    assert json.loads(alone.stdout)["reward"] == "likelihood"
    assert all(r.ref_logps == [None, None] for r in bon_stores(tmp_path / "lik")["bon"].read_all())
    changed = runner.invoke(app, [*args[:-1], "--beta", "0.5"])
    assert changed.exit_code == 1 and "another config" in changed.output and "beta: 0.1 -> 0.5" in changed.output
    (tmp_path / "c.yaml").write_text("shard_size: 7\n")
    resized = runner.invoke(app, [*args[:-1], "--config", str(tmp_path / "c.yaml")])
    assert resized.exit_code == 0, resized.output  # the shard size changes no record: it may differ on a rerun
    forced = runner.invoke(app, [*args[:-1], "--beta", "0.5", "--force-config"])
    assert forced.exit_code == 0, forced.output
    assert bon_stores(out)["bon"].read_config()["beta"] == 0.5


def _row(prompt_id: str, texts: list[str], pol: list, ref: list, tokens: list[int]) -> BonRow:
    rewards = [None if p is None else 0.1 * (p - r) / t for p, r, t in zip(pol, ref, tokens)]
    best = choose(rewards)
    return BonRow(prompt_id=prompt_id, question="Describe.", image="", texts=texts, policy_logps=pol, ref_logps=ref,
                  n_tokens=tokens, rewards=rewards, reasons=["" if p is not None else EMPTY for p in pol],
                  chosen_idx=best, chosen_text=texts[best], chosen_reward=rewards[best], reward_kind="mean", beta=0.1,
                  sampler="s")


def test_world_bon_table_picks_among_the_first_n_with_each_reward_form():
    from rlaifv.pipelines.world_bon import bon_table, pick_first_n
    from rlaifv.world.language import describe, true_mentions
    from rlaifv.world.scenes import CATEGORIES, sample_scenes

    scene = sample_scenes(0, "test", 1)[0]
    absent = next(c for c in CATEGORIES if c not in scene.categories)
    truth = describe(true_mentions(scene), np.random.default_rng(0))
    invented = f"{truth} There is {'an' if absent[0] in 'aeiou' else 'a'} {absent}."
    # log(pi / pi_ref) per sample: 0 invents an object (-1.5 nats over 8 tokens); 1 is the truth (-1.2 over 12);
    # 2 is the truth cut short (-0.5 over 2: the best sum, the worst mean); 3 could not be scored.
    row = _row(scene.scene_id, [invented, truth, truth.split(".")[0] + ".", ""],
               [-5.5, -3.2, -1.5, None], [-4.0, -2.0, -1.0, None], [8, 12, 2, 0])
    assert [pick_first_n(row, n, "mean") for n in (1, 2, 3, 4)] == [0, 1, 1, 1]
    assert [pick_first_n(row, n, "sum") for n in (1, 2, 3, 4)] == [0, 1, 2, 2]
    # log pi per token: 0 -0.69, 1 -0.27, 2 -0.75: the likelihood keeps the truth and never the cut one
    assert [pick_first_n(row, n, "likelihood") for n in (1, 2, 3, 4)] == [0, 1, 1, 1]
    unscorable = _row("x", ["", "a"], [None, -1.0], [None, -1.0], [0, 1])
    assert pick_first_n(unscorable, 1, "mean") == 0  # nothing scorable among the first 1: plain sampling's answer

    table = bon_table([row], {scene.scene_id: scene}, ns=(1, 2, 4))
    assert [(r["reward"], r["n"]) for r in table] == [(k, n) for k in ("likelihood", "mean", "sum") for n in (1, 2, 4)]
    by = {(r["reward"], r["n"]): r for r in table}
    assert by["mean", 1]["chair_s"] == 1.0 and by["mean", 4]["chair_s"] == 0.0 and by["mean", 4]["cover"] == 1.0
    assert by["sum", 4]["mean_len"] < by["mean", 4]["mean_len"]  # the sum's short-answer bias
    with pytest.raises(ValueError, match="best-of-8 needs 8 samples"):
        bon_table([row], {scene.scene_id: scene}, ns=(1, 8))
