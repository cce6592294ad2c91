"""POPE (Li et al. 2023): yes/no questions "Is there a <object> in the image?" about COCO images, in three splits
whose absent objects are random, popular, or adversarial (frequent co-occurrers of the present ones). Not in the
RLAIF-V paper; the field's standard object-hallucination probe.

The question files are the benchmark's own JSONL (rows {"question_id", "image", "text", "label": "yes"|"no"}),
one per split; a file's split is the split name in its file name (coco_pope_adversarial.json) unless given.

A free-form answer is read as POPE's and LLaVA's evaluation scripts read it, so numbers compare with published
ones: keep the text before the first ".", drop commas, split on spaces; the answer is "no" when one of the words is
exactly "no", "No" or "not", else "yes". "Yes" is the positive class for precision, recall and F1; yes_ratio is
the share of "yes" answers (0.5 for an unbiased model, since half the labels are yes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rlaifv.eval.benchfiles import BadBenchmarkFile, MissingBenchmarkFile, read_jsonl

SPLITS = ("random", "popular", "adversarial")
PROMPT_SUFFIX = " Answer the question using a single word or phrase."
METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def split_of(path: Path, split: str | None = None) -> str:
    """The split of a question file: `split` when given, else the one split name in the file name."""
    if split is not None:
        if split not in SPLITS:
            raise ValueError(f"POPE split {split!r} is not one of {', '.join(SPLITS)}")
        return split
    named = [s for s in SPLITS if s in Path(path).name.lower()]
    if len(named) != 1:
        raise ValueError(f"{path}: cannot tell the POPE split from the file name; give --split "
                         f"({' | '.join(SPLITS)})")
    return named[0]


def question_files(data: Path, split: str | None = None) -> list[tuple[str, Path]]:
    """(split, file) for a question file, or for every .json / .jsonl file in a folder whose name names a split."""
    data = Path(data)
    if data.is_dir():
        if split is not None:
            raise ValueError("--split names the split of one question file; a folder's files are told apart by "
                             "their names")
        files = [(s, p) for p in sorted(data.iterdir()) if p.suffix in (".json", ".jsonl")
                 for s in SPLITS if s in p.name.lower()]
        if not files:
            raise MissingBenchmarkFile(data / "coco_pope_random.json",
                                       "POPE questions: JSONL files named after their split")
        return files
    if not data.is_file():
        raise MissingBenchmarkFile(data, "POPE questions: JSONL rows with question_id, image, text and label")
    return [(split_of(data, split), data)]


def load_questions(data: Path, split: str | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    """{(split, str(question_id)): row + split} of every question file."""
    questions: dict[tuple[str, str], dict[str, Any]] = {}
    for s, path in question_files(data, split):
        for number, row in enumerate(read_jsonl(path, "POPE questions", required=("question_id", "image", "text",
                                                                                  "label")), 1):
            label = str(row["label"]).strip().lower()
            if label not in ("yes", "no"):
                raise BadBenchmarkFile(f"{path}, line {number}: label {row['label']!r} is neither yes nor no")
            key = (s, str(row["question_id"]))
            if key in questions:
                raise BadBenchmarkFile(f"{path}, line {number}: question_id {key[1]} occurs twice in split {s}")
            questions[key] = {**row, "label": label, "split": s}
    return questions


def read_answer(text: str) -> str:
    """"yes" or "no" by POPE's rule (module note)."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if "No" in words or "not" in words or "no" in words else "yes"


def read_responses(path: Path, questions: Mapping[tuple[str, str], Any]) -> dict[tuple[str, str], str]:
    """{(split, question_id): response} of rows {"question_id", "response"} (+ "split"; without it, the one split
    of the questions). Unknown or repeated questions are errors."""
    splits = sorted({s for s, _ in questions})
    rows = read_jsonl(path, "responses to POPE: JSONL rows with question_id, split and response",
                      required=("question_id", "response"))
    answers: dict[tuple[str, str], str] = {}
    for number, row in enumerate(rows, 1):
        split = row.get("split")
        if split is None:
            if len(splits) != 1:
                raise BadBenchmarkFile(f"{path}, line {number}: no split, and the questions have several "
                                       f"({', '.join(splits)})")
            split = splits[0]
        key = (str(split), str(row["question_id"]))
        if key not in questions:
            raise BadBenchmarkFile(f"{path}, line {number}: question {key[1]} of split {key[0]} is not in the "
                                   f"POPE questions")
        if key in answers:
            raise BadBenchmarkFile(f"{path}, line {number}: question {key[1]} of split {key[0]} answered twice")
        answers[key] = "" if row["response"] is None else str(row["response"])
    return answers


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def binary_metrics(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 ("yes" positive) and yes-ratio of (predicted, label) pairs, as fractions
    (None where a denominator is zero)."""
    pairs = list(pairs)
    tp = sum(p == "yes" and t == "yes" for p, t in pairs)
    fp = sum(p == "yes" and t == "no" for p, t in pairs)
    fn = sum(p == "no" and t == "yes" for p, t in pairs)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = (2 * precision * recall / (precision + recall)
          if precision is not None and recall is not None and precision + recall else None)
    return {"n": len(pairs), "accuracy": _ratio(sum(p == t for p, t in pairs), len(pairs)), "precision": precision,
            "recall": recall, "f1": f1, "yes_ratio": _ratio(tp + fp, len(pairs))}


def pope_scores(questions: Mapping[tuple[str, str], Mapping[str, Any]],
                answers: Mapping[tuple[str, str], str]) -> dict[str, Any]:
    """Metrics per split over the answered questions, and their plain mean over splits when there are several."""
    per_split = {}
    for split in SPLITS:
        pairs = [(read_answer(text), questions[key]["label"]) for key, text in answers.items() if key[0] == split]
        if pairs:
            per_split[split] = binary_metrics(pairs)
    result: dict[str, Any] = {"per_split": per_split}
    if len(per_split) > 1:
        result["average"] = {m: (None if any(v[m] is None for v in per_split.values())
                                 else sum(v[m] for v in per_split.values()) / len(per_split)) for m in METRICS}
    result["n_unanswered"] = len(questions) - len(answers)
    result["answer_rule"] = "POPE's: text before the first '.', commas dropped; 'no', 'No' or 'not' as a word -> no"
    return result
