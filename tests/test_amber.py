"""AMBER: counters, rounding and matching as AMBER's inference.py computes them, on a hand-made data folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlaifv.eval.amber import AmberData, amber_scores, f1_rounded, read_responses
from rlaifv.eval.benchfiles import BadBenchmarkFile, MissingBenchmarkFile
from rlaifv.eval.textnorm import normalize_phrase

# AMBER's own files, copied into the repository with their license (tests/data/README.md)
AMBER_FILES = Path(__file__).resolve().parent / "data" / "amber"


def _amber_dir(tmp_path: Path, annotations: list[dict]) -> Path:
    data = tmp_path / "amber" / "data"
    data.mkdir(parents=True)
    (data / "annotations.json").write_text(json.dumps(annotations))
    (data / "relation.json").write_text(json.dumps(
        {"dog": ["puppy"], "cat": [], "frisbee": [], "grass": ["lawn"], "car": [], "tree": [], "sign": []}))
    (data / "safe_words.txt").write_text("sign\nlight\n")
    # AMBER's own start values: every denominator starts at 0.001
    (data / "metrics.txt").write_text((AMBER_FILES / "data" / "metrics.txt").read_text())
    return tmp_path / "amber"


# ids 1-2 generative; 3-7 existence; 8-23 relation (all truth "no"); 24-25 attribute
ANNOTATIONS = (
    [{"id": 1, "type": "generative", "truth": ["dog", "grass"], "hallu": ["frisbee", "cat"]},
     {"id": 2, "type": "generative", "truth": ["cat", "tree"], "hallu": ["dog"]}]
    + [{"id": 3 + i, "type": "discriminative-hallucination", "truth": t} for i, t in enumerate(
        ["no", "no", "yes", "yes", "no"])]
    + [{"id": 8 + i, "type": "relation", "truth": "no"} for i in range(16)]
    + [{"id": 24, "type": "discriminative-attribute-state", "truth": "yes"},
       {"id": 25, "type": "discriminative-attribute-number", "truth": "no"}]
)
RESPONSES = (
    [{"id": 1, "response": "A puppy runs on the lawn. Two dogs, a frisbee and a car near a sign."},
     {"id": 2, "response": "A cat sits under a tree."}]
    # existence: right "No", lowercase "no" (not exactly No: wrong), right "Yes", wrong "No", "No." (wrong)
    + [{"id": 3, "response": "No"}, {"id": 4, "response": "no"}, {"id": 5, "response": "Yes"},
       {"id": 6, "response": "No"}, {"id": 7, "response": "No."}]
    # relation: 3 right "No", 13 wrong "Yes"
    + [{"id": 8 + i, "response": "No" if i < 3 else "Yes"} for i in range(16)]
    + [{"id": 24, "response": "Yes"}, {"id": 25, "response": "Yes, it is."}]
)


@pytest.fixture()
def amber(tmp_path):
    root = _amber_dir(tmp_path, ANNOTATIONS)
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RESPONSES))
    data = AmberData.load(root)
    return amber_scores(read_responses(path, data), data)


def test_existence_rounding_and_its_larger_f1_epsilon(amber):
    # 5 answers, 2 exactly right: 2/5.001 -> 39.99 -> 40.0
    # precision = right "No" / "No" answers = 1/2.001 -> 49.975 -> 50.0
    # recall = right "No" / truth no = 1/3.001 -> 33.32 -> 33.3
    # F1 = 2 * .5 * .333 / (.5 + .333 + 0.001) = 0.39928 -> 39.9 (with 0.0001 it would be 40.0)
    assert amber["discriminative"]["existence"] == {"accuracy": 40.0, "precision": 50.0, "recall": 33.3, "f1": 39.9}


def test_relation_rounding_uses_metrics_txt_start_values(amber):
    # 3 right of 16: 3/16.001 = 18.7488 -> 18.7 (3/16 = 18.75 would round to 18.8)
    # precision 3/3.001 -> 99.97 -> 100.0; recall 3/16.001 -> 18.7
    # F1 = 2 * 1.0 * .187 / (1.0 + .187 + 0.0001) = 0.31505 -> 31.5
    assert amber["discriminative"]["relation"] == {"accuracy": 18.7, "precision": 100.0, "recall": 18.7, "f1": 31.5}


def test_attribute_sums_its_three_kinds_and_counts_non_exact_answers_wrong(amber):
    # state "Yes" right, number "Yes, it is." wrong: 1/(2 + 0.003) = 49.93 -> 49.9; no "No" answers: 0/0.003 -> 0.0;
    # recall 0/1.003 -> 0.0; F1 0/(0 + 0 + 0.0001) -> 0.0
    assert amber["discriminative"]["attribute"] == {"accuracy": 49.9, "precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_overall_discriminative(amber):
    # 23 answers, 6 right (2 + 3 + 1): 6/23.001 = 26.086 -> 26.1
    # "No" answers 5 (2 existence + 3 relation), 4 right: 4/5.001 -> 79.98 -> 80.0
    # truth no 20 (3 + 16 + 1), 4 answered "No": 4/20.001 -> 19.999 -> 20.0
    # F1 = 2 * .8 * .2 / (.8 + .2 + 0.0001) = 0.31997 -> 32.0
    assert amber["discriminative"]["overall"] == {"accuracy": 26.1, "precision": 80.0, "recall": 20.0, "f1": 32.0}


def test_generative_chair_cover_hal_cog(amber):
    # response 1 keeps puppy, lawn, dog(s), frisbee, car, sign (6 vocabulary nouns): sign is a safe word; puppy
    # covers dog and lawn covers grass (associated words); frisbee is a hallucination target (Cog) and a
    # hallucination; car is a hallucination -> 2 of 6. Response 2: cat, tree, both true -> 0 of 2.
    # CHAIR 2/8.001 -> 24.997 -> 25.0; Cover 4/4.001 -> 99.975 -> 100.0; Hal 100 - 1/2.001*100 = 50.025 -> 50.0;
    # Cog 1/3.001 -> 33.32 -> 33.3
    assert amber["generative"] == {"chair": 25.0, "cover": 100.0, "hal": 50.0, "cog": 33.3}
    assert "POS" in amber["noun_extraction"]
    # (100 - CHAIR + F1) / 2 = (100 - 25.0 + 32.0) / 2
    assert amber["amber_score"] == 53.5
    assert amber["n_responses"] == {"generative": 2, "discriminative": 23}


def test_vocabulary_normalization_changes_only_the_plural_entries():
    # responses are matched on normalized tokens, so a vocabulary word must normalize to itself -- except AMBER's
    # plural entries, which then match their singular ("chopstick") as the lemmatized response word
    raw = json.loads((AMBER_FILES / "data" / "relation.json").read_text())
    words = set(raw) | {w for v in raw.values() for w in v}
    changed = {w for w in words if normalize_phrase(w) != w.lower()}
    assert changed == {"people", "chopsticks", "earrings", "slippers", "sunglasses"}
    assert all(normalize_phrase(normalize_phrase(w)) == normalize_phrase(w) for w in words)


def test_f1_is_computed_from_rounded_percentages():
    assert f1_rounded(50.0, 33.3, 0.001) == 39.9
    assert f1_rounded(50.0, 33.3, 0.0001) == 40.0


def test_a_part_without_responses_is_left_out(tmp_path):
    root = _amber_dir(tmp_path, ANNOTATIONS)
    data = AmberData.load(root)
    result = amber_scores([{"id": 2, "response": "A cat."}], data)
    assert "discriminative" not in result and "amber_score" not in result and result["generative"]["chair"] == 0.0
    only_existence = amber_scores([{"id": 5, "response": "Yes"}], data)
    assert set(only_existence["discriminative"]) == {"overall", "existence"} and "generative" not in only_existence


def test_answers_cut_to_yes_or_no_are_counted(tmp_path):
    data = AmberData.load(_amber_dir(tmp_path, ANNOTATIONS))
    rows = [{"id": 5, "response": "Yes", "raw_response": "Yes, there is a dog."}, {"id": 6, "response": "No"}]
    assert amber_scores(rows, data)["n_mapped_yes_no"] == 1  # what `eval report` flags next to the paper's AMBER


def test_unknown_or_repeated_ids_are_errors(tmp_path):
    data = AmberData.load(_amber_dir(tmp_path, ANNOTATIONS))
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": 99, "response": "Yes"}\n')
    with pytest.raises(BadBenchmarkFile, match="id 99"):
        read_responses(path, data)
    path.write_text('{"id": 5, "response": "Yes"}\n{"id": 5, "response": "No"}\n')
    with pytest.raises(BadBenchmarkFile, match="twice"):
        read_responses(path, data)


def test_missing_file_names_the_exact_path(tmp_path):
    root = _amber_dir(tmp_path, ANNOTATIONS)
    (root / "data" / "metrics.txt").unlink()
    with pytest.raises(MissingBenchmarkFile) as err:
        AmberData.load(root)
    assert str(root / "data" / "metrics.txt") in str(err.value)


def test_real_amber_files_load_and_score_perfect_answers():
    data = AmberData.load(AMBER_FILES)
    rows = [{"id": qid, "response": "Yes" if a["truth"] == "yes" else "No"}
            for qid, a in data.annotations.items() if a["type"] != "generative"]
    result = amber_scores(rows, data)
    # every answer right: 100.0 everywhere, F1 = 2*1*1/(2 + eps) -> 100.0
    for part in ("overall", "existence", "attribute", "relation"):
        assert result["discriminative"][part] == {"accuracy": 100.0, "precision": 100.0, "recall": 100.0, "f1": 100.0}
    assert result["n_responses"]["discriminative"] == 14216
