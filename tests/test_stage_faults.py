"""Faults inside stage runs on the micro world's real models: NaN and inf logits (the sampling policy, the labeler,
best-of-N scorers, the reference pass), empty responses, responses without claims, unparsable splitter output,
images of zero pixels and truncated image files. Each faulty item becomes a quarantined row with its stage and a
reason whose kind the summary counts; every other item is processed as without the fault; a rerun adds nothing.

Logits are poisoned by forward hooks on the loaded models (tests/faults.py), splitter output by forcing the world's
splitter LM to answer with a word that is not a list; the other faults are real records and real files.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from pathlib import Path

import pytest
import torch
from faults import forced_answer, nan_embedding, poisoned_logits
from transformers import AutoTokenizer

from rlaifv.config import CollectConfig
from rlaifv.pipelines.collect import run_stage, stores, summarize
from rlaifv.records import Candidate, Prompt, reason_kind

torch.set_num_threads(1)

N_PROMPTS = 4
PLAIN = ["There is a red cup on the left. A small ball is at the top.", "A green tree is in the middle."]
MARK = "purple star"  # the words whose item a hook poisons
MARKED = f"A red cup is on the left. A {MARK} is at the bottom."  # the marker never opens a response
NON_FINITE_VERDICT = "labeler returned non-finite probabilities"


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory, micro_config) -> Path:
    from rlaifv.prompts import write_world_prompts

    out = tmp_path_factory.mktemp("fault-prompts") / "prompts.jsonl"
    return write_world_prompts(micro_config.seed, "prompts", N_PROMPTS, out, micro_config.prior)


def config_for(world, **changes) -> CollectConfig:
    cfg = {"sample": {"policy": {"path": str(world.policy)}, "n": 2, "max_new_tokens": 8, "temperature": 1.0},
           "judge": {"labeler": {"path": str(world.labeler)}, "prompts_per_batch": 2}, "shard_size": 3}
    for key, value in changes.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return CollectConfig.model_validate(cfg)


def seed_candidates(out: Path, prompts_file: Path, cfg: CollectConfig, texts: dict[int, list[str]]) -> list[Prompt]:
    """The prompts stage on the file, then candidates as sampling would have stored them: prompt k answers
    texts[k] (PLAIN where not given)."""
    run_stage("prompts", prompts_file, out, cfg)
    prompts = stores(out)["prompts"].read_all()
    with stores(out)["candidates"].writer() as writer:
        for k, p in enumerate(prompts):
            writer.add_unit([Candidate(p.prompt_id, i, t, 0, "seeded", {}, 0)
                             for i, t in enumerate(texts.get(k, PLAIN))])
    return prompts


def token_ids(model_path: Path, text: str) -> list[int]:
    """`text`'s ids inside a sentence (after a space), as the model reads them."""
    return AutoTokenizer.from_pretrained(model_path)(f" {text}", add_special_tokens=False)["input_ids"]


def question_end(model_path: Path) -> list[int]:
    """The ids the chat template puts after a user's question: a labeler reads its answer at their last one."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_path)
    slot = "QUESTION"
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                                          "text": slot}]}],
                                         add_generation_prompt=True)
    return processor.tokenizer(text.partition(slot)[2], add_special_tokens=False)["input_ids"]


def snapshot(out: Path, name: str) -> tuple[list[dict], list[dict]]:
    store = stores(out)[name]
    return [r.to_row() for r in store.read()], [q.to_row() for q in store.read_quarantine()]


def quarantined(out: Path, name: str) -> dict[str, str]:
    """record key -> reason kind of a collect store's quarantine, every row checked to name the store's stage."""
    rows = stores(out)[name].read_quarantine()
    assert all(q.stage == name for q in rows)
    return {q.record_key: reason_kind(q.reason) for q in rows}


def counted(out: Path, name: str) -> dict[str, int]:
    return summarize(out)["stages"][name]["quarantined"]


# -- non-finite logits ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value,marked_prompt", [(math.nan, 0), (math.inf, N_PROMPTS - 1)])
def test_non_finite_labeler_logits_quarantine_that_claim_only(value, marked_prompt, micro_world, prompts_file,
                                                             tmp_path):
    # prompt 0 sits in the packed path's probe: the fault must not switch the run to the slow path either
    out, cfg = tmp_path / "run", config_for(micro_world)
    seed_candidates(out, prompts_file, cfg, {marked_prompt: [MARKED, PLAIN[1]]})
    run_stage("claims", None, out, cfg)
    claims = stores(out)["claims"].read_all()
    marked = {c.key for c in claims if MARK in c.statement}
    assert len(marked) == 1

    with poisoned_logits(token_ids(micro_world.labeler, MARK), value, question_end(micro_world.labeler)) as hits:
        result = run_stage("judge", None, out, cfg)
        assert hits  # the fault fired
        assert quarantined(out, "verdicts") == dict.fromkeys(marked, NON_FINITE_VERDICT)
        verdicts = stores(out)["verdicts"].read_all()
        assert {v.key for v in verdicts} == {c.key for c in claims} - marked  # the run went on
        assert all(math.isfinite(v.p_yes) and math.isfinite(v.p_no) for v in verdicts)
        assert (result["done"], result["quarantined"]) == (len(claims) - 1, 1)
        assert counted(out, "verdicts") == {NON_FINITE_VERDICT: 1}
        assert result["fast_paths"]["judge.packed"]["fast"]

        before = snapshot(out, "verdicts")
        again = run_stage("judge", None, out, cfg)
        assert (again["done"], again["quarantined"], again["skipped"]) == (0, 0, len(claims))
        assert snapshot(out, "verdicts") == before


BROKEN_TOKEN = "#"  # no world question or answer holds it


@pytest.mark.parametrize("n", [2, 1])  # the shared-prefill decoding loop, and `generate` (one sample a prompt)
def test_non_finite_policy_logits_quarantine_that_prompt_in_sampling(n, micro_world, prompts_file, tmp_path):
    from transformers import AutoProcessor

    rows = [json.loads(line) for line in prompts_file.read_text().splitlines()]
    rows[1]["question"] = f"Describe the image {BROKEN_TOKEN}"
    rows[1]["image"] = str(prompts_file.parent / rows[1]["image"])
    for row in rows[:1] + rows[2:]:
        row["image"] = str(prompts_file.parent / row["image"])
    marked = tmp_path / "prompts.jsonl"
    marked.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    cfg = config_for(micro_world, sample={"n": n, "prompts_per_batch": 4})
    run_stage("prompts", marked, out, cfg)
    bad = stores(out)["prompts"].read_all()[1].prompt_id
    tokenizer = AutoProcessor.from_pretrained(micro_world.policy).tokenizer
    [token] = tokenizer(BROKEN_TOKEN, add_special_tokens=False)["input_ids"]

    with nan_embedding(token, len(tokenizer)) as hits:
        result = run_stage("sample", None, out, cfg)
    assert hits  # the fault fired
    assert quarantined(out, "candidates") == {bad: "sampling refused"}
    [q] = stores(out)["candidates"].read_quarantine()
    assert "logits were not finite" in q.reason
    candidates = stores(out)["candidates"].read_all()
    assert len(candidates) == (N_PROMPTS - 1) * n and bad not in {c.prompt_id for c in candidates}  # went on
    assert (result["done"], result["quarantined"]) == (N_PROMPTS - 1, 1)
    assert counted(out, "candidates") == {"sampling refused": 1}

    before = snapshot(out, "candidates")
    again = run_stage("sample", None, out, cfg)
    assert (again["done"], again["quarantined"], again["skipped"]) == (0, 0, N_PROMPTS)
    assert snapshot(out, "candidates") == before


def test_non_finite_scorer_logits_set_the_answer_aside_in_best_of_n(micro_world, prompts_file, tmp_path):
    from rlaifv.config import BonConfig
    from rlaifv.infer.bon import STAGE
    from rlaifv.pipelines.best_of_n import best_of_n, bon_stores

    out = tmp_path / "bon"
    s = bon_stores(out)
    from rlaifv.prompts import ingest_prompts

    ingest_prompts(prompts_file, s["prompts"])
    prompts = s["prompts"].read_all()
    answers = {0: [PLAIN[0], MARKED], 1: [MARKED, MARKED.replace("left", "right")]}  # prompt 1: nothing scorable
    with s["candidates"].writer() as writer:
        for k, p in enumerate(prompts):
            writer.add_unit([Candidate(p.prompt_id, i, t, 0, "seeded", {}, 0)
                             for i, t in enumerate(answers.get(k, PLAIN))])
    cfg = BonConfig.model_validate({"policy": {"path": str(micro_world.policy)},
                                    "reference": {"path": str(micro_world.policy)}, "n": 2,
                                    "prompts_per_batch": 2, "candidates_per_pack": 2, "packs_per_batch": 2})

    with poisoned_logits(token_ids(micro_world.policy, MARK)) as hits:
        summary = best_of_n(out, cfg)
        assert hits
        rows = {r.prompt_id: r for r in s["bon"].read_all()}
        [q] = s["bon"].read_quarantine()
        assert (q.stage, q.record_key, reason_kind(q.reason)) == (STAGE, prompts[1].prompt_id,
                                                                  "no candidate can be scored")
        assert "non-finite log-prob (policy nan, reference nan)" in q.reason
        assert set(rows) == {p.prompt_id for p in prompts} - {prompts[1].prompt_id}  # the run went on
        first = rows[prompts[0].prompt_id]
        assert reason_kind(first.reasons[1]) == "non-finite log-prob" and first.rewards[1] is None
        assert first.chosen_idx == 0 and first.policy_logps[1] is None
        assert all(math.isfinite(x) for r in rows.values() for x in r.rewards if x is not None)
        assert all(not reason for k in (2, 3) for reason in rows[prompts[k].prompt_id].reasons)
        assert summary["candidates_set_aside"] == {"non-finite log-prob": 1}
        assert summary["quarantine_reasons"] == {"no candidate can be scored": 1}
        assert summary["this_run"]["fast_paths"]["policy"]["bon.packed"]["fast"]

        before = ([r.to_row() for r in s["bon"].read()], [r.to_row() for r in s["bon"].read_quarantine()])
        again = best_of_n(out, cfg)
        assert again["this_run"]["done"] == 0 and again["scored"] == summary["scored"]
        assert ([r.to_row() for r in s["bon"].read()], [r.to_row() for r in s["bon"].read_quarantine()]) == before


def test_non_finite_reference_log_probs_quarantine_the_pair(micro_world, prompts_file, tmp_path):
    from rlaifv.config import DPOConfig
    from rlaifv.logps.reference import STAGE, compute_reference_logps, read_reference
    from rlaifv.preferences import load_pairs
    from rlaifv.prompts import ingest_prompts
    from rlaifv.records import Pair, RefLogps
    from rlaifv.store import ShardedStore

    root = tmp_path / "fb"
    prompts = ShardedStore(root / "prompts", Prompt)
    ingest_prompts(prompts_file, prompts)
    with ShardedStore(root / "preferences" / "pairs", Pair).writer() as writer:
        for k, p in enumerate(prompts.read()):
            rejected = MARKED if k == 2 else PLAIN[1]
            writer.add(Pair(p.prompt_id, p.image, p.question, PLAIN[0], rejected, 0.0, -1.0, 0, None, None, {}))
    loaded = load_pairs(root)
    marked = {e.key for e in loaded.examples if MARK in e.rejected}
    cfg = DPOConfig(precompute_ref_batch_size=3)
    store = ShardedStore(tmp_path / "ref", RefLogps, stage=STAGE)

    with poisoned_logits(token_ids(micro_world.policy, MARK), math.inf) as hits:
        counts = compute_reference_logps(loaded, micro_world.policy, cfg, store_dir=store.root)
        assert hits
        assert (counts["done"], counts["quarantined"]) == (N_PROMPTS - 1, 1)
        table = read_reference(store, loaded)
        assert set(table.quarantined) == marked and table.reasons() == {"non-finite log-prob": 1}
        assert all(q.stage == STAGE for q in store.read_quarantine())
        assert set(table.logps) == {e.key for e in loaded.examples} - marked
        assert all(math.isfinite(r.chosen_logp) and math.isfinite(r.rejected_logp) for r in table.logps.values())

        again = compute_reference_logps(loaded, micro_world.policy, cfg, store_dir=store.root)
        assert (again["done"], again["quarantined"], again["skipped"]) == (0, 0, N_PROMPTS)
        assert read_reference(store, loaded) == table


# -- responses a splitter cannot split -----------------------------------------------------------------------------

EMPTY = {0: [PLAIN[0], ""], 1: ["   \n ", PLAIN[1]]}  # prompt k: its answers


@pytest.mark.parametrize("splitter", ["rules", "llm"])
def test_empty_responses_are_quarantined_by_the_claims_stage(splitter, micro_world, prompts_file, tmp_path):
    out, cfg = tmp_path / "run", config_for(micro_world, claims={"splitter": splitter})
    prompts = seed_candidates(out, prompts_file, cfg, EMPTY)
    empty = {f"{prompts[0].prompt_id}/1", f"{prompts[1].prompt_id}/0"}
    result = run_stage("claims", None, out, cfg, micro_world_config())
    assert {k: v for k, v in quarantined(out, "claims").items() if k in empty} == dict.fromkeys(empty,
                                                                                             "empty response")
    assert counted(out, "claims")["empty response"] == 2
    split = {f"{c.prompt_id}/{c.sample_idx}" for c in stores(out)["claims"].read()}
    assert not split & empty and len(split) + result["quarantined"] == 2 * N_PROMPTS  # every other one: claims
    before = snapshot(out, "claims")
    assert run_stage("claims", None, out, cfg, micro_world_config())["done"] == 0
    assert snapshot(out, "claims") == before


def test_empty_responses_are_quarantined_by_the_holistic_judge(micro_world, prompts_file, tmp_path):
    out, cfg = tmp_path / "run", config_for(micro_world, judge={"mode": "holistic"})
    prompts = seed_candidates(out, prompts_file, cfg, EMPTY)
    empty = {f"{prompts[0].prompt_id}/1/0", f"{prompts[1].prompt_id}/0/0"}  # one claim per response: the response
    result = run_stage("judge", None, out, cfg)
    assert quarantined(out, "verdicts") == dict.fromkeys(empty, "empty response")
    assert {v.key for v in stores(out)["verdicts"].read()} == {f"{p.prompt_id}/{i}/0" for p in prompts
                                                               for i in range(2)} - empty
    assert (result["done"], result["quarantined"]) == (2 * N_PROMPTS - 2, 2)
    assert counted(out, "verdicts") == {"empty response": 2}
    before = snapshot(out, "verdicts")
    assert run_stage("judge", None, out, cfg)["quarantined"] == 0 and snapshot(out, "verdicts") == before


class ColorSplitter:
    """A splitter of the `Splitter` protocol that answers an empty list, not a reason, when nothing qualifies: one
    claim per sentence naming a color."""

    COLORS = ("red", "green", "blue", "yellow", "white", "purple")

    def split(self, items):
        out = []
        for _, response in items:
            found = [s.strip() + "." for s in response.split(".") if any(c in s.split() for c in self.COLORS)]
            out.append([(s, f"Is it true that {s[0].lower()}{s[1:-1]}?") for s in found])
        return out


def test_existence_claims_are_stored_judged_and_scored_as_support(micro_world, prompts_file, tmp_path):
    """`claims.existence_claims` reaches the stored claims (the bare existence question before each mention with a
    detail, marked as support, with the question suffix), the verdicts and the scores (test_pairs checks a support
    claim's "no", which the micro labeler may never say)."""
    from rlaifv.feedback.pairs import score_candidates

    cfg = config_for(micro_world, claims={"existence_claims": True})
    out = tmp_path / "run"
    seed_candidates(out, prompts_file, cfg, {})
    run_stage("claims", None, out, cfg)
    s = stores(out)
    first = sorted((c for c in s["claims"].read() if c.sample_idx == 0), key=lambda c: (c.prompt_id, c.claim_idx))
    assert [(c.question, c.support) for c in first[:4]] == [
        ("Is there a cup? Answer yes or no.", True), ("Is there a red cup on the left? Answer yes or no.", False),
        ("Is there a ball? Answer yes or no.", True), ("Is a small ball at the top? Answer yes or no.", False),
    ]
    assert len(first) == 4 * N_PROMPTS
    run_stage("judge", None, out, cfg)
    verdicts = s["verdicts"].read_all()
    support = {c.key: c.support for c in s["claims"].read()}
    assert {v.key: v.support for v in verdicts} == support
    for scored in score_candidates(verdicts):
        mine = [v for v in verdicts if (v.prompt_id, v.sample_idx) == (scored.prompt_id, scored.sample_idx)]
        assert scored.n_rejected == sum(not v.accepted for v in mine if not v.support)
        assert scored.n_claims == sum(not v.support or v.accepted for v in mine)


NO_CLAIMS = "I think it is nice."


@pytest.mark.parametrize("splitter", ["rules", "empty list", "llm answering none"])
def test_a_response_without_claims_is_quarantined(splitter, micro_world, prompts_file, tmp_path):
    from rlaifv.feedback.claims import make_splitter, run_claims

    cfg = config_for(micro_world, claims={"splitter": "llm" if splitter.startswith("llm") else "rules"})
    out = tmp_path / "run"
    # the world's splitter LM finds claims in anything; it is made to answer "none" for the marked sentence
    bare_text = f"I think the {MARK} is nice." if splitter.startswith("llm") else NO_CLAIMS
    prompts = seed_candidates(out, prompts_file, cfg, {2: [PLAIN[0], bare_text]})
    bare = f"{prompts[2].prompt_id}/1"
    s = stores(out)

    def run() -> dict:
        if splitter == "empty list":
            return run_claims(s["prompts"], s["candidates"], s["claims"], cfg.claims, ColorSplitter())
        return run_claims(s["prompts"], s["candidates"], s["claims"], cfg.claims,
                          make_splitter(cfg.claims, str(micro_world.splitter)))

    if splitter == "llm answering none":
        tokenizer = AutoTokenizer.from_pretrained(micro_world.splitter)
        none = tokenizer("none", add_special_tokens=False)["input_ids"]
        with forced_answer(token_ids(micro_world.splitter, MARK), none, tokenizer.eos_token_id) as forced:
            result = run()
        assert forced
    else:
        result = run()
    assert quarantined(out, "claims")[bare] == "no claims found"
    assert counted(out, "claims")["no claims found"] >= 1
    assert bare not in {f"{c.prompt_id}/{c.sample_idx}" for c in s["claims"].read()}
    assert result["done"] + result["quarantined"] == 2 * N_PROMPTS
    before = snapshot(out, "claims")
    again = run()
    assert (again["done"], again["quarantined"]) == (0, 0) and snapshot(out, "claims") == before


def test_unparsable_splitter_output_is_quarantined_and_the_rest_split_as_without_it(micro_world, prompts_file,
                                                                                    tmp_path):
    cfg = config_for(micro_world, claims={"splitter": "llm"})
    texts = {1: [PLAIN[0], MARKED]}
    clean, faulty = tmp_path / "clean", tmp_path / "faulty"
    prompts = seed_candidates(clean, prompts_file, cfg, texts)
    seed_candidates(faulty, prompts_file, cfg, texts)
    run_stage("claims", None, clean, cfg, micro_world_config())
    tokenizer = AutoTokenizer.from_pretrained(micro_world.splitter)
    garbage = token_ids(micro_world.splitter, "kite")  # a word, not a list
    with forced_answer(token_ids(micro_world.splitter, MARK), garbage, tokenizer.eos_token_id) as forced:
        result = run_stage("claims", None, faulty, cfg, micro_world_config())
    assert forced
    key = f"{prompts[1].prompt_id}/1"
    [q] = [q for q in stores(faulty)["claims"].read_quarantine() if q.record_key == key]
    assert reason_kind(q.reason) == "unparsable statement output" and "'kite'" in q.reason
    assert q.reason.endswith("(sentence 2)")  # where, after the kind
    assert counted(faulty, "claims").get("unparsable statement output", 0) == \
        counted(clean, "claims").get("unparsable statement output", 0) + 1
    # every other response: the claims (or the reason) it gets without the fault
    claims_clean, q_clean = snapshot(clean, "claims")
    claims_faulty, q_faulty = snapshot(faulty, "claims")
    assert claims_faulty == [c for c in claims_clean if f"{c['prompt_id']}/{c['sample_idx']}" != key]
    assert [r for r in q_faulty if r["record_key"] != key] == [r for r in q_clean if r["record_key"] != key]
    assert result["done"] + result["quarantined"] == 2 * N_PROMPTS


def micro_world_config():
    from rlaifv.world.config import WorldConfig

    return WorldConfig.preset("micro")


# -- images that do not decode -------------------------------------------------------------------------------------


def zero_pixel_png() -> bytes:
    """A well-formed PNG whose header says 0 x 0 pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def bad_images(prompts_file: Path, folder: Path) -> dict[str, Path]:
    """Real files: a zero-pixel PNG, and one of the world's images cut in half (a truncated download)."""
    first = json.loads(prompts_file.read_text().splitlines()[0])
    whole = (prompts_file.parent / first["image"]).read_bytes()
    files = {"zero": folder / "zero.png", "cut": folder / "cut.png"}
    files["zero"].write_bytes(zero_pixel_png())
    files["cut"].write_bytes(whole[: len(whole) // 2])
    return files


def test_undecodable_images_are_quarantined_at_ingest(micro_world, prompts_file, tmp_path):
    files = bad_images(prompts_file, tmp_path)
    lines = prompts_file.read_text().splitlines()[:2]
    lines = [json.dumps({**json.loads(x), "image": str(prompts_file.parent / json.loads(x)["image"])}) for x in lines]
    lines += [json.dumps({"id": name, "image": str(path), "question": "Describe the image."})
              for name, path in files.items()]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join(lines))
    out, cfg = tmp_path / "run", config_for(micro_world)
    run_stage("prompts", mixed, out, cfg)
    reasons = {q.record_key: q.reason for q in stores(out)["prompts"].read_quarantine()}
    assert {reason_kind(r) for r in reasons.values()} == {"undecodable image"} and len(reasons) == 2
    assert "zero pixels" in reasons["zero"] and "BytesIO" not in reasons["zero"]  # the file, not a buffer, named
    assert counted(out, "prompts") == {"undecodable image": 2} and len(stores(out)["prompts"]) == 2


def test_undecodable_images_in_a_stored_prompt_are_quarantined_by_sampling_and_judging(micro_world, prompts_file,
                                                                                       tmp_path):
    # prompts stored without the ingest check (an older store, another tool): the stages meet the bad files
    out, cfg = tmp_path / "run", config_for(micro_world)
    run_stage("prompts", prompts_file, out, cfg)
    s = stores(out)
    bad = {name: Prompt(name, str(path), None, hashlib.sha256(path.read_bytes()).hexdigest(), "Describe the image.",
                        "crafted", {}) for name, path in bad_images(prompts_file, tmp_path).items()}
    with s["prompts"].writer() as writer:
        for p in bad.values():
            writer.add(p)

    result = run_stage("sample", None, out, cfg)
    assert quarantined(out, "candidates") == dict.fromkeys(bad, "undecodable image")
    assert (result["done"], result["quarantined"]) == (N_PROMPTS, 2)
    assert len(s["candidates"]) == N_PROMPTS * 2 and counted(out, "candidates") == {"undecodable image": 2}

    # claims about them reach the judge (e.g. from a candidates store filled elsewhere)
    with s["candidates"].writer() as writer:
        for p in bad.values():
            writer.add_unit([Candidate(p.prompt_id, i, PLAIN[0], 0, "seeded", {}, 0) for i in range(2)])
    run_stage("claims", None, out, cfg)
    judged = run_stage("judge", None, out, cfg)
    claims = s["claims"].read_all()
    on_bad = {c.key for c in claims if c.prompt_id in bad}
    assert on_bad and quarantined(out, "verdicts") == dict.fromkeys(on_bad, "undecodable image")
    assert {v.key for v in s["verdicts"].read()} == {c.key for c in claims} - on_bad
    assert judged["quarantined"] == len(on_bad) and counted(out, "verdicts") == {"undecodable image": len(on_bad)}
    for stage, name in (("sample", "candidates"), ("judge", "verdicts")):
        before = snapshot(out, name)
        assert run_stage(stage, None, out, cfg)["done"] == 0 and snapshot(out, name) == before
