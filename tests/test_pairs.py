"""Pairs stage on hand-made records: gap and cap rules, length balance worked out by hand, the stage end to end on real
stores (rebuild, resume), and both exports loaded back with ``datasets``."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from rlaifv.config import PairsConfig
from rlaifv.feedback.export import export_rlaifv_dataset, export_trl
from rlaifv.feedback.pairs import build_pairs, length_balance, pairs_for_prompt, score_candidates
from rlaifv.records import Candidate, Pair, Prompt, Scored, Verdict
from rlaifv.store import ShardedStore

PROMPT = Prompt("p0", "img/p0.png", None, "", "What is in the image?", "world/train", {})


def _scored(*scores: int) -> list[Scored]:
    """Candidates 0, 1, ... of PROMPT with the given scores (score = -n_rejected)."""
    return [Scored.from_counts("p0", i, 5, -score) for i, score in enumerate(scores)]


def _texts(n: int) -> dict[int, str]:
    return {i: f"answer number {i}" for i in range(n)}


def _pairs(scored: list[Scored], texts: dict[int, str] | None = None, **cfg) -> list[Pair]:
    texts = texts if texts is not None else _texts(len(scored))
    return pairs_for_prompt(PROMPT, scored, texts, PairsConfig(**cfg))


def _indices(pairs: list[Pair]) -> list[tuple[int, int]]:
    return [(p.meta["chosen_idx"], p.meta["rejected_idx"]) for p in pairs]


def _pair(chosen_words: int, rejected_words: int, tag: str = "") -> Pair:
    """A pair whose answers have the given lengths in words (distinct texts via ``tag``)."""
    return Pair(
        "p0", "", "q", " ".join(["c" + tag] * chosen_words), " ".join(["r" + tag] * rejected_words),
        0.0, -1.0, 0, None, None, {},
    )  # fmt: skip


# -- scores -------------------------------------------------------------------------------------------------------


def test_score_counts_rejections_per_candidate_in_key_order():
    verdicts = [
        Verdict.from_probs("b", 0, 0, 0.9, 0.1),
        Verdict.from_probs("a", 1, 0, 0.2, 0.8),
        Verdict.from_probs("a", 0, 0, 0.6, 0.4),
        Verdict.from_probs("a", 1, 1, 0.5, 0.5),  # a tie is a rejection
        Verdict.from_probs("a", 1, 2, 0.7, 0.3),
    ]
    assert score_candidates(verdicts) == [
        Scored("a", 0, 1, 0, -0.0),
        Scored("a", 1, 3, 2, -2.0),
        Scored("b", 0, 1, 0, -0.0),
    ]


def test_a_support_claim_counts_when_accepted_and_never_lowers_the_score():
    verdicts = [
        Verdict.from_probs("a", 0, 0, 0.9, 0.1, support=True),  # "Is there a cup?" yes: one more accepted claim
        Verdict.from_probs("a", 0, 1, 0.2, 0.8),  # "Is there a red cup on the left?" no
        Verdict.from_probs("a", 1, 0, 0.1, 0.9, support=True),  # "Is there a knife?" no: its detailed claim counts
        Verdict.from_probs("a", 1, 1, 0.3, 0.7),
        Verdict.from_probs("a", 1, 2, 0.8, 0.2),
    ]
    assert score_candidates(verdicts) == [Scored("a", 0, 2, 1, -1.0), Scored("a", 1, 2, 1, -1.0)]


def test_verdicts_stored_before_the_support_field_read_as_plain_claims(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    old = pa.table({"prompt_id": ["a"], "sample_idx": [0], "claim_idx": [0], "p_yes": [0.2], "p_no": [0.8],
                    "accepted": [False]})
    pq.write_table(old, tmp_path / "old.parquet")
    (row,) = pq.read_table(tmp_path / "old.parquet").to_pylist()
    assert Verdict.from_row(row) == Verdict.from_probs("a", 0, 0, 0.2, 0.8)
    with pytest.raises(KeyError):  # a column without a default is still required
        Verdict.from_row({k: v for k, v in row.items() if k != "p_no"})


# -- gap, cap, identical texts ------------------------------------------------------------------------------------


def test_gap_of_one_pairs_with_the_higher_score_chosen():
    # Candidate 0 is the worse one, so "chosen = first" would fail.
    (pair,) = _pairs(_scored(-3, -2))
    assert _indices([pair]) == [(1, 0)]
    assert (pair.chosen, pair.rejected) == ("answer number 1", "answer number 0")
    assert (pair.chosen_score, pair.rejected_score) == (-2.0, -3.0)
    assert (pair.image, pair.question, pair.round) == (PROMPT.image, PROMPT.question, 0)
    assert (pair.ref_chosen_logp, pair.ref_rejected_logp) == (None, None)


def test_equal_scores_never_pair():
    assert _pairs(_scored(-1, -1, -1)) == []
    assert _pairs(_scored(0, 0), min_gap=0.5) == []


def test_min_gap_two_keeps_only_wide_gaps():
    assert _indices(_pairs(_scored(0, -1, -2), min_gap=2, max_pairs_per_prompt=10)) == [(0, 2)]
    assert sorted(_indices(_pairs(_scored(0, -1, -2), max_pairs_per_prompt=10))) == [(0, 1), (0, 2), (1, 2)]


def test_meta_and_round_are_carried():
    (pair,) = pairs_for_prompt(PROMPT, _scored(0, -1), _texts(2), PairsConfig(round=3), {"policy": "m@1"})
    assert pair.round == 3
    assert pair.meta == {"policy": "m@1", "chosen_idx": 0, "rejected_idx": 1}


def test_identical_texts_are_dropped_and_duplicates_pair_once():
    assert _pairs(_scored(0, -2), {0: "same words", 1: "same words"}) == []
    # Samples 0 and 1 are the same answer: (0, 2) and (1, 2) are one pair, not two.
    pairs = _pairs(_scored(0, 0, -1), {0: "a cat", 1: "a cat", 2: "a dog"}, max_pairs_per_prompt=10)
    assert [(p.chosen, p.rejected) for p in pairs] == [("a cat", "a dog")]


def test_cap_is_reproducible_and_depends_on_the_seed():
    scored = _scored(0, -1, -2, -3, -4)  # 10 eligible pairs
    picks = {seed: _indices(_pairs(scored, seed=seed)) for seed in range(8)}
    for seed, pick in picks.items():
        assert len(pick) == 2 and len(set(pick)) == 2
        assert all(scored[c].score > scored[r].score for c, r in pick)
        assert _indices(_pairs(scored, seed=seed)) == pick
    assert len({tuple(pick) for pick in picks.values()}) > 1


def test_cap_does_not_depend_on_other_prompts_or_input_order():
    scored = _scored(0, -1, -2, -3, -4)
    assert _indices(_pairs(scored[::-1], seed=5)) == _indices(_pairs(scored, seed=5))



def test_keep_accepted_drops_pairs_whose_chosen_answer_says_less_that_is_true():
    # (claims, rejected): 0 says 5 things, 1 wrong; 1 stops early: 3 things, all right; 2 says 6, 2 wrong.
    scored = [Scored.from_counts("p0", 0, 5, 1), Scored.from_counts("p0", 1, 3, 0), Scored.from_counts("p0", 2, 6, 2)]
    assert _indices(_pairs(scored, max_pairs_per_prompt=10)) == [(1, 0), (0, 2), (1, 2)]
    # 1 over 0 (3 accepted < 4) and 1 over 2 (3 < 4) win by saying less; 0 over 2 (4 accepted = 4) stays
    assert _indices(_pairs(scored, max_pairs_per_prompt=10, keep_accepted=True)) == [(0, 2)]
    # the cap draws among the kept pairs only
    assert _indices(_pairs(scored, max_pairs_per_prompt=1, keep_accepted=True)) == [(0, 2)]

def test_closest_length_keeps_the_pair_of_nearest_lengths_and_draws_the_rest():
    scored = _scored(0, -1, -2, -3)  # 6 eligible pairs
    texts = {0: "a b c", 1: "a b c d e f g", 2: "x y z w", 3: "p q r s t u v w x"}  # 3, 7, 4 and 9 words
    # gaps in words: (0,1) 4, (0,2) 1, (0,3) 6, (1,2) 3, (1,3) 2, (2,3) 5: (0, 2) is the closest
    for seed in range(6):
        pick = _indices(_pairs(scored, texts, seed=seed, closest_length=1))
        assert len(pick) == 2 and (0, 2) in pick
        assert pick == sorted(pick)  # original order kept
    drawn = {tuple(_indices(_pairs(scored, texts, seed=seed, closest_length=1))) for seed in range(6)}
    assert len(drawn) > 1  # the second pair is a seeded draw among the other five
    assert _indices(_pairs(scored, texts, closest_length=2)) == [(0, 2), (1, 3)]  # both by length
    # 0 keeps the plain seeded draw
    assert _indices(_pairs(scored, texts, seed=3, closest_length=0)) == _indices(_pairs(scored, texts, seed=3))


def test_closest_by_accepted_gain_ranks_pairs_by_what_the_chosen_answer_adds_that_is_true():
    # (claims, rejected) -> accepted: 0 (4, 0) 4; 1 (3, 1) 2; 2 (2, 1) 1; 3 (5, 2) 3
    scored = [Scored.from_counts("p0", 0, 4, 0), Scored.from_counts("p0", 1, 3, 1), Scored.from_counts("p0", 2, 2, 1),
              Scored.from_counts("p0", 3, 5, 2)]
    texts = {0: "a b c d", 1: "a b c", 2: "a b c d e", 3: "a b c d e f"}
    # eligible (chosen, rejected): (0,1) gain 2, (0,2) 3, (0,3) 1, (1,3) -1, (2,3) -2; word gaps 1, 1, 2, 3, 1
    assert _indices(_pairs(scored, texts, closest_length=2, closest_by="accepted_gain")) == [(0, 1), (0, 2)]
    for seed in range(4):  # one ranked pair, the largest gain, and one drawn
        assert (0, 2) in _indices(_pairs(scored, texts, closest_length=1, closest_by="accepted_gain", seed=seed))
    texts[2] = "a b c d e f g h"  # (0,2) now 4 words apart: by words it drops out, by gain it stays
    assert _indices(_pairs(scored, texts, closest_length=2)) == [(0, 1), (0, 3)]  # gaps 1, then 2 (earliest)
    assert _indices(_pairs(scored, texts, closest_length=2, closest_by="accepted_gain")) == [(0, 1), (0, 2)]
    # equal gains fall back to the length gap: (0,1) and (0,2) both gain 2, and (0,2) is now the closer in words
    scored[2] = Scored.from_counts("p0", 2, 3, 1)
    texts[1], texts[2] = "a b c d e f g h i", "a b c d e"  # gaps: (0,1) 5, (0,2) 1
    for seed in range(6):
        assert (0, 2) in _indices(_pairs(scored, texts, closest_length=1, closest_by="accepted_gain", seed=seed))



def test_closest_by_mixed_alternates_the_two_rankings_over_the_ranked_places():
    scored = [Scored.from_counts("p0", 0, 4, 0), Scored.from_counts("p0", 1, 3, 1), Scored.from_counts("p0", 2, 2, 1),
              Scored.from_counts("p0", 3, 5, 2)]  # accepted 4, 2, 1, 3
    texts = {0: "a b c d", 1: "a b c d e x", 2: "a b c d e f g h", 3: "a b c d e f"}
    # (chosen, rejected): (0,1) gain 2 gap 2; (0,2) 3, 4; (0,3) 1, 2; (1,3) -1, 0; (2,3) -2, 2
    assert _indices(_pairs(scored, texts, closest_length=2)) == [(0, 1), (1, 3)]
    assert _indices(_pairs(scored, texts, closest_length=2, closest_by="accepted_gain")) == [(0, 1), (0, 2)]
    # words takes (1,3) first, then the gain ranking takes the best of the rest
    assert _indices(_pairs(scored, texts, closest_length=2, closest_by="mixed")) == [(0, 2), (1, 3)]
    for seed in range(6):  # one ranked place: words' pick, and one drawn pair
        assert (1, 3) in _indices(_pairs(scored, texts, closest_length=1, closest_by="mixed", seed=seed))
    # the third place goes back to words: (0,1), the earliest of the gap-2 pairs left
    assert _indices(_pairs(scored, texts, closest_length=3, closest_by="mixed", max_pairs_per_prompt=3)) == [
        (0, 1), (0, 2), (1, 3)]
    # more ranked places than pairs: every pair, no error
    assert len(_pairs(scored, texts, closest_length=9, closest_by="mixed", max_pairs_per_prompt=9)) == 5

# -- length balance -----------------------------------------------------------------------------------------------


def test_length_balance_hand_computed():
    # (chosen, rejected) words and ratio (lr - lc) / lr:
    #   a (10, 10) 0    b (8, 10) 0.2    c (5, 10) 0.5    d (12, 10) -0.2    e (1, 10) 0.9
    # r in [0, 0.2):   {a, d}          |22 - 20| / 20 = 0.1
    # r in [0.2, 0.5): {a, b, d}       |30 - 30| / 30 = 0      <- best, on 0.20 ... 0.48: the tie goes to 0.48
    # r in [0.5, 0.9): {a, b, c, d}    |35 - 40| / 40 = 0.125
    # r >= 0.9:        all             |36 - 50| / 50 = 0.28
    a, b, c, d, e = _pair(10, 10, "a"), _pair(8, 10, "b"), _pair(5, 10, "c"), _pair(12, 10, "d"), _pair(1, 10, "e")
    kept, r = length_balance([a, b, c, d, e])
    assert r == pytest.approx(0.48)
    assert kept == [a, b, d]


def test_length_balance_keeps_a_ratio_equal_to_r():
    # x: ratio 49/50 = 0.98 exactly. Below r = 0.98 only y is kept: |99 - 50| / 50; at 0.98 both: |100 - 100| = 0.
    x, y = _pair(1, 50, "x"), _pair(99, 50, "y")
    assert length_balance([x, y]) == ([x, y], pytest.approx(0.98))


def test_length_balance_edge_cases():
    assert length_balance([]) == ([], None)
    empty_rejected = _pair(3, 0)
    assert length_balance([empty_rejected]) == ([empty_rejected], pytest.approx(0.98))
    too_long = _pair(0, 60)  # ratio 1 > 0.98: no r keeps it
    assert length_balance([too_long]) == ([], None)


# -- the stage on real stores -------------------------------------------------------------------------------------

COLORS = {"p0": (255, 0, 0), "p1": (0, 255, 0), "p2": (0, 0, 255), "p3": (255, 255, 0)}


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buf, format="PNG")
    return buf.getvalue()


def _words(n: int, word: str) -> str:
    return " ".join([word] * n)


# prompt -> sample -> (text, verdicts as accepted flags). Scores: p0 0/-1/-2 (+ an unjudged sample), p1 a tie,
# p2 0/-3, p3 nothing judged.
CANDIDATES: dict[str, dict[int, tuple[str, list[bool]]]] = {
    "p0": {
        0: (_words(4, "good"), [True, True]),
        1: (_words(4, "fair"), [True, False]),
        2: (_words(8, "poor"), [False, True, False]),
        3: (_words(2, "unjudged"), []),
    },
    "p1": {0: (_words(3, "one"), [False]), 1: (_words(3, "two"), [False])},
    "p2": {0: (_words(5, "right"), [True]), 1: (_words(4, "wrong"), [False, False, False])},
    "p3": {0: (_words(3, "later"), [])},
}


def _verdicts(judged: dict[str, dict[int, tuple[str, list[bool]]]]) -> list[Verdict]:
    return [
        Verdict.from_probs(pid, idx, k, 0.9 if ok else 0.1, 0.1 if ok else 0.9)
        for pid, samples in judged.items()
        for idx, (_, flags) in samples.items()
        for k, ok in enumerate(flags)
    ]


def _write(store: ShardedStore, records: list) -> ShardedStore:
    with store.writer() as writer:
        for record in records:
            writer.add(record)
    return store


@pytest.fixture()
def inputs(tmp_path: Path) -> tuple[ShardedStore, ShardedStore, ShardedStore]:
    """Four prompts (p2's image stored as bytes, the others as files), their candidates and verdicts."""
    prompts = []
    for pid, color in COLORS.items():
        data = _png(color)
        sha = hashlib.sha256(data).hexdigest()
        if pid == "p2":
            prompts.append(Prompt(pid, "", data, sha, f"Describe {pid}.", "world/train", {"type": "describe"}))
        else:
            path = tmp_path / "images" / f"{pid}.png"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)
            prompts.append(Prompt(pid, str(path), None, sha, f"Describe {pid}.", "world/train", {}))
    candidates = [
        Candidate(pid, idx, text, len(text.split()), "tiny@1", {"temperature": 1.0}, idx)
        for pid, samples in CANDIDATES.items()
        for idx, (text, _) in samples.items()
    ]
    return (
        _write(ShardedStore(tmp_path / "prompts", Prompt, shard_size=2), prompts),
        _write(ShardedStore(tmp_path / "candidates", Candidate, shard_size=3), candidates),
        _write(ShardedStore(tmp_path / "verdicts", Verdict, shard_size=4), _verdicts(CANDIDATES)),
    )


def test_build_pairs_end_to_end(inputs, tmp_path):
    # Before balance (cap 3 keeps every pair): p0 (good, fair) 4/4 ratio 0, (good, poor) 4/8 0.5, (fair, poor) 4/8 0.5;
    # p2 (right, wrong) 5/4 ratio -0.25. r < 0.5 keeps the two pairs with ratio <= 0: |9 - 8| / 8 = 0.125; r >= 0.5
    # keeps all: |17 - 24| / 24 = 0.29. So r = 0.48 and two pairs remain.
    cfg = PairsConfig(max_pairs_per_prompt=3)
    summary = build_pairs(*inputs, tmp_path / "out", cfg)
    assert summary == {
        "n_prompts": 4,
        "n_prompts_unscored": 1,
        "n_prompts_no_pair": 1,
        "n_scored": 7,
        "n_pairs_before_cap": 4,
        "n_pairs_before_balance": 4,
        "n_pairs": 2,
        "length_balance_r": pytest.approx(0.48),
        "mean_len_chosen": 4.5,
        "mean_len_rejected": 4.0,
    }
    pairs = ShardedStore(tmp_path / "out" / "pairs", Pair)
    got = {
        (p.prompt_id, p.chosen.split()[0], p.rejected.split()[0], p.chosen_score, p.rejected_score)
        for p in pairs.read()
    }
    assert got == {("p0", "good", "fair", 0.0, -1.0), ("p2", "right", "wrong", 0.0, -3.0)}
    assert all(p.meta["policy"] == "tiny@1" for p in pairs.read())
    assert pairs.read_config() == cfg.model_dump(mode="json")
    scores = ShardedStore(tmp_path / "out" / "scores", Scored).read_all()
    assert [(s.prompt_id, s.sample_idx, s.score) for s in scores] == [
        ("p0", 0, 0.0), ("p0", 1, -1.0), ("p0", 2, -2.0), ("p1", 0, -1.0), ("p1", 1, -1.0), ("p2", 0, 0.0),
        ("p2", 1, -3.0),
    ]  # fmt: skip
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["n_pairs"] == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left behind


def test_without_length_balance_every_capped_pair_stays(inputs, tmp_path):
    summary = build_pairs(*inputs, tmp_path / "out", PairsConfig(max_pairs_per_prompt=3, length_balance=False))
    assert (summary["n_pairs"], summary["length_balance_r"]) == (4, None)


def test_rebuild_resume_and_invalidation(inputs, tmp_path):
    out, cfg = tmp_path / "out", PairsConfig()
    first = build_pairs(*inputs, out, cfg)
    pairs = ShardedStore(out / "pairs", Pair).read_all()
    shard = ShardedStore(out / "pairs", Pair).shard_paths()[0]
    inode = shard.stat().st_ino

    # Same config, same inputs: the finished result is returned, not rebuilt.
    assert build_pairs(*inputs, out, cfg) == first
    assert shard.stat().st_ino == inode

    # Deleted output: rebuilt identically (same seeded picks). A stale temp folder of a killed run is cleaned up.
    shutil.rmtree(out)
    (tmp_path / ".out.tmp-999999").mkdir()
    assert build_pairs(*inputs, out, cfg) == first
    assert ShardedStore(out / "pairs", Pair).read_all() == pairs
    assert not (tmp_path / ".out.tmp-999999").exists()

    # Another config rebuilds and records itself.
    other = PairsConfig(round=1)
    build_pairs(*inputs, out, other)
    assert ShardedStore(out / "pairs", Pair).read_config()["round"] == 1
    assert {p.round for p in ShardedStore(out / "pairs", Pair).read()} == {1}

    # A resumed upstream stage that appends verdicts (p3 judged now) invalidates the result.
    prompts, candidates, verdicts = inputs
    _write(verdicts, [Verdict.from_probs("p3", 0, 0, 0.9, 0.1)])
    assert build_pairs(*inputs, out, other)["n_prompts_unscored"] == 0


def test_verdicts_without_candidates_raise(inputs, tmp_path):
    prompts, candidates, verdicts = inputs
    _write(verdicts, [Verdict.from_probs("p1", 7, 0, 0.9, 0.1)])
    with pytest.raises(ValueError, match="samples \\[7\\]"):
        build_pairs(prompts, candidates, verdicts, tmp_path / "out", PairsConfig())
    assert not (tmp_path / "out").exists()


# -- exports ------------------------------------------------------------------------------------------------------


@pytest.fixture()
def built(inputs, tmp_path) -> tuple[ShardedStore, ShardedStore]:
    build_pairs(*inputs, tmp_path / "out", PairsConfig(max_pairs_per_prompt=3, length_balance=False))
    return ShardedStore(tmp_path / "out" / "pairs", Pair), inputs[0]


def _load(path: Path, cache: Path):
    import datasets  # a dev dependency: imported here so the other tests run without it

    return datasets, datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(cache))


def test_export_trl_loads_as_a_vision_preference_dataset(built, tmp_path):
    pairs, prompts = built
    path = export_trl(pairs, prompts, tmp_path / "export" / "trl.parquet")
    datasets, ds = _load(path, tmp_path / "hf")
    assert ds.column_names == ["images", "prompt", "chosen", "rejected"]
    assert isinstance(ds.features["images"].feature, datasets.Image)
    assert len(ds) == 4
    by_text = {pair.chosen + "|" + pair.rejected: pair for pair in pairs.read()}
    for row in ds:
        pair = by_text[row["chosen"][0]["content"][0]["text"] + "|" + row["rejected"][0]["content"][0]["text"]]
        (image,) = row["images"]
        assert isinstance(image, Image.Image) and image.size == (8, 6)
        assert image.convert("RGB").getpixel((0, 0)) == COLORS[pair.prompt_id]
        (user,) = row["prompt"]
        assert user["role"] == "user"
        assert [c["type"] for c in user["content"]] == ["image", "text"]
        assert user["content"][1]["text"] == f"Describe {pair.prompt_id}."
        assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
    assert [p.name for p in (tmp_path / "export").iterdir()] == ["trl.parquet"]


def test_export_rlaifv_dataset_has_the_release_columns(built, tmp_path):
    pairs, prompts = built
    path = export_rlaifv_dataset(pairs, prompts, tmp_path / "rlaifv.parquet")
    datasets, ds = _load(path, tmp_path / "hf")
    assert ds.column_names == [
        "ds_name", "image", "question", "chosen", "rejected", "origin_dataset", "origin_split", "idx", "image_path",
    ]  # fmt: skip
    assert isinstance(ds.features["image"], datasets.Image)
    assert all(ds.features[name] == datasets.Value("string") for name in ds.column_names if name != "image")
    keys = {pair.key: pair for pair in pairs.read()}
    assert sorted(ds["idx"]) == sorted(keys)
    for row in ds:
        pair = keys[row["idx"]]
        assert (row["chosen"], row["rejected"], row["question"]) == (pair.chosen, pair.rejected, pair.question)
        assert row["ds_name"] == "rlaifv" and row["origin_dataset"] == "world"
        assert row["image"].convert("RGB").getpixel((0, 0)) == COLORS[pair.prompt_id]
        origin = json.loads(row["origin_split"])
        assert origin == {
            "split": "train",
            "type": "describe" if pair.prompt_id == "p2" else None,
            "model": "tiny@1",
            "round": 0,
        }
        assert row["image_path"] == (
            "" if pair.prompt_id == "p2" else str(tmp_path / "images" / f"{pair.prompt_id}.png")
        )


def test_export_refuses_a_changed_image(built, tmp_path):
    pairs, prompts = built
    (tmp_path / "images" / "p0.png").write_bytes(_png((1, 2, 3)))
    with pytest.raises(ValueError, match="sha256"):
        export_trl(pairs, prompts, tmp_path / "trl.parquet")
    assert not (tmp_path / "trl.parquet").exists()
