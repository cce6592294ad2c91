"""Record contracts: keys, row round trips, derived fields, Parquet schema."""

from __future__ import annotations

import dataclasses
import json

import pyarrow as pa
import pytest

from rlaifv.records import (
    BonRow,
    Candidate,
    Claim,
    Generation,
    Pair,
    Prompt,
    Quarantined,
    RefLogps,
    Scored,
    Verdict,
)


def make_pair(chosen: str = "a red cup", rejected: str = "a blue cup", **kw) -> Pair:
    defaults = {
        "prompt_id": "p1",
        "image": "img/1.jpg",
        "question": "What is on the table?",
        "chosen_score": 0.0,
        "rejected_score": -2.0,
        "round": 1,
        "ref_chosen_logp": None,
        "ref_rejected_logp": -12.5,
        "meta": {"src": "x"},
    }
    return Pair(chosen=chosen, rejected=rejected, **{**defaults, **kw})


def test_keys_are_deterministic_ids() -> None:
    assert Prompt("p1", "a.jpg", None, "ab", "q?", "coco", {}).key == "p1"
    assert Candidate("p1", 3, "t", 1, "m@r", {}, 0).key == "p1/3"
    assert Claim("p1", 3, 2, "s", "q?").key == "p1/3/2"
    assert Verdict.from_probs("p1", 3, 2, 0.7, 0.2).key == "p1/3/2"
    assert Scored.from_counts("p1", 3, 4, 1).key == "p1/3"
    assert Quarantined("claims", "p1/3", "empty", "{}").key == "claims/p1/3"
    assert Generation("p9", "t", 1).key == "p9"


def test_pair_key_hashes_both_texts() -> None:
    pair = make_pair()
    prompt_id, digest = pair.key.split("/")
    assert prompt_id == "p1"
    assert len(digest) == 12 and int(digest, 16) >= 0
    # Same texts -> same key, whatever the other fields; swapped texts -> another key.
    assert make_pair(round=2, meta={"other": 1}).key == pair.key
    assert make_pair(chosen="a blue cup", rejected="a red cup").key != pair.key
    assert make_pair(chosen="a red cup!").key != pair.key


def test_key_of_row_matches_key() -> None:
    pair = make_pair()
    assert Pair.key_of(pair.to_row()) == pair.key
    claim = Claim("p1", 3, 2, "s", "q?")
    assert Claim.key_of(claim.to_row()) == claim.key


@pytest.mark.parametrize(
    "record",
    [
        Prompt("p1", "", b"\x89PNG\x00", "ff", "q?", "coco", {"w": 640, "tags": ["a"]}),
        Prompt("p2", "a.jpg", None, "ee", "q?", "coco", {}),
        Candidate("p1", 0, "text", 7, "llava@abc", {"temperature": 0.7}, 42),
        Claim("p1", 0, 1, "There is a cup.", "Is there a cup?"),
        Verdict.from_probs("p1", 0, 1, 0.9, 0.1),
        Scored.from_counts("p1", 0, 5, 2),
        make_pair(),
        Quarantined("claims", "p1/0", "no claims", '{"text": ""}'),
        Generation("p1", "greedy", 3),
        RefLogps("p1/abc", -12.5, -20.0, 7, 9),
        BonRow("p1", "q?", "", ["a", "", "c"], [-3.0, None, -4.0], [-3.5, None, -4.0], [2, 0, 3], [0.25, None, 0.0],
               ["", "empty response", ""], 0, "a", 0.25, "mean", 0.1, "s"),
    ],
    ids=lambda r: type(r).__name__,
)
def test_row_round_trip(record) -> None:
    row = record.to_row()
    assert set(row) == {f.name for f in dataclasses.fields(record)}
    assert type(record).from_row(row) == record
    # The row survives a JSON-free Arrow round trip with the declared schema.
    table = pa.Table.from_pylist([row], schema=type(record).arrow_schema())
    assert type(record).from_row(table.to_pylist()[0]) == record


def test_dict_fields_are_json_text_in_rows() -> None:
    meta = {"b": [1, 2], "a": {"nested": True}}
    row = Prompt("p1", "a.jpg", None, "ee", "q?", "coco", meta).to_row()
    assert isinstance(row["meta"], str)
    assert json.loads(row["meta"]) == meta
    assert isinstance(
        Candidate("p", 0, "t", 1, "m@r", {"top_p": 0.9}, 0).to_row()["sampling"], str
    )


def test_none_in_a_required_field_is_refused() -> None:
    with pytest.raises(ValueError, match="statement"):
        Claim("p1", 0, 1, None, "q?").to_row()  # type: ignore[arg-type]
    assert make_pair(ref_chosen_logp=None).to_row()["ref_chosen_logp"] is None


def test_records_are_frozen_and_slotted() -> None:
    claim = Claim("p1", 0, 1, "s", "q?")
    with pytest.raises(dataclasses.FrozenInstanceError):
        claim.statement = "other"  # type: ignore[misc]
    assert not hasattr(claim, "__dict__")


def test_verdict_tie_is_a_rejection() -> None:
    assert Verdict.from_probs("p", 0, 0, 0.5, 0.5).accepted is False
    assert Verdict.from_probs("p", 0, 0, 0.51, 0.49).accepted is True
    assert Verdict.from_probs("p", 0, 0, 0.49, 0.51).accepted is False


def test_verdict_rejects_inconsistent_accepted() -> None:
    with pytest.raises(ValueError):
        Verdict("p", 0, 0, 0.5, 0.5, True)
    with pytest.raises(ValueError):
        Verdict("p", 0, 0, 0.2, 0.8, True)


def test_scored_score_is_minus_rejected() -> None:
    scored = Scored.from_counts("p", 1, n_claims=6, n_rejected=2)
    assert scored.score == -2.0 and isinstance(scored.score, float)


def test_arrow_schema_types_and_nullability() -> None:
    prompt = Prompt.arrow_schema()
    assert prompt.field("image_bytes").type == pa.binary()
    assert prompt.field("image_bytes").nullable
    assert prompt.field("meta").type == pa.string()
    assert not prompt.field("prompt_id").nullable
    pair = Pair.arrow_schema()
    assert pair.field("ref_chosen_logp").type == pa.float64()
    assert pair.field("ref_chosen_logp").nullable
    assert pair.field("round").type == pa.int64()
    assert Verdict.arrow_schema().field("accepted").type == pa.bool_()


def test_list_fields_are_arrow_lists_with_the_item_nullability_of_their_annotation() -> None:
    schema = BonRow.arrow_schema()
    assert schema.field("texts").type == pa.list_(pa.string())
    assert schema.field("n_tokens").type == pa.list_(pa.int64())
    assert schema.field("rewards").type == pa.list_(pa.float64())
    assert not schema.field("rewards").nullable  # the list itself is required; its items may be None
    row = BonRow("p1", "q?", "", ("a",), (None,), (None,), (0,), (None,), ("empty response",), 0, "a", 0.0, "sum",
                 0.1, "s").to_row()
    assert row["texts"] == ["a"] and row["rewards"] == [None]  # tuples are stored as lists
    with pytest.raises(ValueError, match="texts holds None"):
        BonRow("p1", "q?", "", [None], [None], [None], [0], [None], [""], 0, "a", 0.0, "sum", 0.1, "s").to_row()


def test_best_of_n_rows_keep_the_parquet_schema_they_were_stored_with() -> None:
    # The schema BonRow spelled out by hand before records had list columns: shards written with it must still read.
    f64, text = pa.float64(), pa.string()
    lists = {"texts": pa.list_(text), "policy_logps": pa.list_(f64), "ref_logps": pa.list_(f64),
             "n_tokens": pa.list_(pa.int64()), "rewards": pa.list_(f64), "reasons": pa.list_(text),
             "chosen_idx": pa.int64(), "chosen_reward": f64, "beta": f64}
    before = pa.schema([pa.field(f.name, lists.get(f.name, text), nullable=False)
                        for f in dataclasses.fields(BonRow)])
    assert BonRow.arrow_schema() == before
