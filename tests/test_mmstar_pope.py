"""MMStar and POPE: answer reading rules, scores worked out by hand on hand-made files, the data formats the
benchmarks ship in (Parquet, a `datasets` export, POPE's JSONL per split), and `rlaifv eval mmstar | pope`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_bench_items import _answer
from typer.testing import CliRunner

from rlaifv.cli import app
from rlaifv.eval.benchfiles import BadBenchmarkFile, read_table
from rlaifv.eval.mmstar import extract_choice
from rlaifv.eval.pope import read_answer


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _invoke(*args: str):
    return CliRunner().invoke(app, ["eval", *args])


@pytest.mark.parametrize("text,letter", [
    ("B", "B"), (" (C) ", "C"), ("D.", "D"), ("**A**", "A"), ("[B]", "B"),
    ("B. The suitcase is on the book.", "B"), ("C) two", "C"), ("A: red", "A"),
    ("The answer is B.", "B"), ("Answer: (C)", "C"), ("The correct option is D, since ...", "D"),
    ("I pick (A) here.", "A"), ("B. So the answer is B", "B"),  # one letter named twice
    ("A dog sits on the sofa.", None),  # the article is no option label
    ("A or C", None), ("Answer: B, or maybe (C)", None),  # several letters
    ("b", None), ("answer: d", None),  # lower case letters are not read
    ("I think it is E", None), ("", None),
])
def test_option_letter_rule(text, letter):
    assert extract_choice(text) == letter


def _png(color: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 3), color).save(buf, format="PNG")
    return buf.getvalue()


MMSTAR = [  # index, answer, category
    (0, "A", "math"), (1, "B", "math"), (2, "C", "science"), (3, "D", "science"), (4, "A", "perception"),
    (5, "B", "perception"), (6, "C", "perception")]


def _mmstar_table() -> pa.Table:
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # the `datasets` Image feature in Parquet
    return pa.table({
        "index": [i for i, _, _ in MMSTAR],
        "question": [f"Question {i}?\nOptions: A: one, B: two, C: three, D: four" for i, _, _ in MMSTAR],
        "image": pa.array([{"bytes": _png("red"), "path": None} for _ in MMSTAR], type=image),
        "answer": [a for _, a, _ in MMSTAR],
        "category": [c for _, _, c in MMSTAR],
        "l2_category": ["x"] * len(MMSTAR),
    })


@pytest.fixture()
def mmstar_parquet(tmp_path):
    folder = tmp_path / "MMStar" / "mmstar"
    folder.mkdir(parents=True)
    pq.write_table(_mmstar_table(), folder / "val-00000-of-00001.parquet")
    return folder / "val-00000-of-00001.parquet"


def test_mmstar_scores_by_hand(tmp_path, mmstar_parquet):
    responses = _jsonl(tmp_path / "r.jsonl", [
        {"index": 0, "response": "A"},  # right
        {"index": 1, "response": "(B) The suitcase is on the book."},  # right
        {"index": 2, "response": "The answer is D."},  # wrong letter
        {"index": 3, "response": "A dog sits on the sofa."},  # no letter: unparsed
        {"index": 4, "response": "A or C"},  # unparsed
        {"index": 5, "response": "Answer: B. (B) is right, not (C)."},  # two letters: unparsed
    ])  # index 6 unanswered
    out = tmp_path / "runs" / "mmstar.json"
    for data in (mmstar_parquet, mmstar_parquet.parent.parent):  # the file, or the downloaded folder
        result = _invoke("mmstar", "--responses", str(responses), "--data", str(data), "--out", str(out), "--json")
        assert result.exit_code == 0, result.output
        got = json.loads(result.stdout)
        # 2 right of 6 answered; 3 unparsed (index 3, 4, 5)
        assert (got["n"], got["accuracy"], got["unparsed"], got["n_unanswered"]) == (6, 2 / 6, 3, 1)
        assert got["per_category"] == {"math": {"n": 2, "accuracy": 1.0, "unparsed": 0},
                                       "perception": {"n": 2, "accuracy": 0.0, "unparsed": 2},
                                       "science": {"n": 2, "accuracy": 0.0, "unparsed": 1}}
        assert got["predictions"][2] == {"index": 2, "predicted": "D", "answer": "C"}
        assert json.loads(out.read_text()) == got


def test_mmstar_reads_a_datasets_export(tmp_path, mmstar_parquet):
    datasets = pytest.importorskip("datasets")
    exported = tmp_path / "mmstar_disk"
    datasets.Dataset(_mmstar_table()).save_to_disk(str(exported))
    rows = read_table(exported, "MMStar", ("index", "answer"), optional=("category", "nothing"))
    assert rows == [{"index": i, "answer": a, "category": c} for i, a, c in MMSTAR]


def test_mmstar_generate_reads_images_from_the_table(tmp_path, mmstar_parquet, echo_policy):
    rows = _answer("mmstar", mmstar_parquet, tmp_path / "out.jsonl")
    assert [r["index"] for r in rows] == list(range(7)) and echo_policy == [(4, 3)] * 7
    assert rows[0] == {"index": 0, "category": "math", "response": "seen: Question 0?\nOptions: A: one, B: two, "
                       "C: three, D: four\nAnswer with the option's letter from the given choices directly."}


def test_mmstar_errors_name_file_and_column(tmp_path, mmstar_parquet):
    pq.write_table(_mmstar_table().drop_columns(["category"]), tmp_path / "bad.parquet")
    with pytest.raises(BadBenchmarkFile, match="bad.parquet: no column category"):
        read_table(tmp_path / "bad.parquet", "MMStar", ("index", "category"))
    responses = _jsonl(tmp_path / "r.jsonl", [{"index": 99, "response": "A"}])
    unknown = _invoke("mmstar", "--responses", str(responses), "--data", str(mmstar_parquet))
    assert unknown.exit_code == 2 and "line 1: index 99 is not in the MMStar data" in unknown.stderr
    gone = _invoke("mmstar", "--responses", str(responses), "--data", str(tmp_path / "none.parquet"))
    assert gone.exit_code == 2 and str(tmp_path / "none.parquet") in gone.stderr
    (tmp_path / "junk.parquet").write_text("not parquet")
    junk = _invoke("mmstar", "--responses", str(responses), "--data", str(tmp_path / "junk.parquet"))
    assert junk.exit_code == 2 and "junk.parquet: not a readable parquet table" in junk.stderr


@pytest.mark.parametrize("text,answer", [
    ("Yes, there is a dog.", "yes"), ("No.", "no"), ("There is not a cat.", "no"), ("Yes", "yes"),
    ("NO", "yes"),  # POPE's rule matches "No", "no" and "not" exactly, so an all-caps NO reads as yes
    ("no, it is not.", "no"), ("I see a cat. No doubt.", "yes"),  # only the first sentence counts
    ("Nope", "yes"),
])
def test_pope_answer_rule(text, answer):
    assert read_answer(text) == answer


@pytest.fixture()
def pope_files(tmp_path):
    folder = tmp_path / "pope"
    folder.mkdir()
    (tmp_path / "coco").mkdir()
    for name in ("COCO_val2014_1.jpg", "COCO_val2014_2.jpg"):
        Image.new("RGB", (6, 6)).save(tmp_path / "coco" / name)
    for split in ("random", "adversarial"):
        _jsonl(folder / f"coco_pope_{split}.json", [
            {"question_id": 1, "image": "COCO_val2014_1.jpg", "text": "Is there a dog in the image?", "label": "yes"},
            {"question_id": 2, "image": "COCO_val2014_1.jpg", "text": "Is there a cat in the image?", "label": "no"},
            {"question_id": 3, "image": "COCO_val2014_2.jpg", "text": "Is there a cat in the image?",
             "label": "no" if split == "adversarial" else "yes"},
            {"question_id": 4, "image": "COCO_val2014_2.jpg", "text": "Is there a car in the image?",
             "label": "yes" if split == "adversarial" else "no"}])
    return folder


def test_pope_scores_by_hand(tmp_path, pope_files):
    rows = [("random", 1, "Yes, there is a dog."),  # TP
            ("random", 2, "No."),  # TN
            ("random", 3, "There is not a cat."),  # FN
            ("random", 4, "Yes"),  # FP
            ("adversarial", 1, "yes"),  # TP
            ("adversarial", 2, "NO"),  # read as yes: FP
            ("adversarial", 3, "no, it is not."),  # TN
            ("adversarial", 4, "I see a cat. No doubt.")]  # yes: TP
    responses = _jsonl(tmp_path / "r.jsonl", [{"split": s, "question_id": q, "response": t} for s, q, t in rows])
    result = _invoke("pope", "--responses", str(responses), "--data", str(pope_files), "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    # random: TP 1, FP 1, FN 1, TN 1 -> every metric 1/2
    assert got["per_split"]["random"] == {"n": 4, "accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5,
                                          "yes_ratio": 0.5}
    # adversarial: TP 2, FP 1, TN 1 -> accuracy 3/4, precision 2/3, recall 1, F1 2(2/3)/(5/3) = 4/5, yes 3/4
    adv = got["per_split"]["adversarial"]
    assert (adv["accuracy"], adv["recall"], adv["yes_ratio"]) == (0.75, 1.0, 0.75)
    assert adv["precision"] == pytest.approx(2 / 3) and adv["f1"] == pytest.approx(0.8)
    assert got["average"]["accuracy"] == 0.625 and got["average"]["f1"] == pytest.approx(0.65)
    assert got["average"]["precision"] == pytest.approx(7 / 12) and got["n_unanswered"] == 0


def test_pope_one_file_with_its_split_given(tmp_path, pope_files):
    single = tmp_path / "questions.jsonl"
    single.write_text((pope_files / "coco_pope_random.json").read_text())
    responses = _jsonl(tmp_path / "r.jsonl", [{"question_id": 1, "response": "Yes"}])  # rows need no split here
    unknown = _invoke("pope", "--responses", str(responses), "--data", str(single))
    assert unknown.exit_code == 2 and "give --split" in unknown.stderr
    result = _invoke("pope", "--responses", str(responses), "--data", str(single), "--split", "popular", "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert list(got["per_split"]) == ["popular"] and got["per_split"]["popular"]["accuracy"] == 1.0
    assert got["n_unanswered"] == 3 and "average" not in got
    bad = _invoke("pope", "--responses", str(responses), "--data", str(single), "--split", "hard")
    assert bad.exit_code == 2 and "'hard' is not one of random, popular, adversarial" in bad.stderr


def test_pope_generate_keys_questions_by_split(tmp_path, pope_files, echo_policy):
    from rlaifv.eval.bench_generate import benchmark_items

    rows = _answer("pope", pope_files, tmp_path / "out.jsonl", images=tmp_path / "coco")
    assert [r["id"] for r in rows] == [f"{s}/{q}" for s in ("adversarial", "random") for q in (1, 2, 3, 4)]
    assert rows[0] == {"id": "adversarial/1", "split": "adversarial", "question_id": 1,
                       "question": "Is there a dog in the image?",
                       "response": "seen: Is there a dog in the image? Answer the question using a single word or "
                                   "phrase.", "image": str(tmp_path / "coco" / "COCO_val2014_1.jpg")}
    # the generated file is what `rlaifv eval pope` reads
    scored = _invoke("pope", "--responses", str(tmp_path / "out.jsonl"), "--data", str(pope_files), "--json")
    assert scored.exit_code == 0 and json.loads(scored.stdout)["per_split"]["random"]["yes_ratio"] == 1.0
    with pytest.raises(FileNotFoundError, match="COCO_val2014_1.jpg"):
        benchmark_items("pope", pope_files, tmp_path)  # images are not there
