"""MMStar (Chen et al. 2024): 1,500 multiple-choice questions that need the image, in six categories; the paper
reports its accuracy to show that alignment keeps general ability.

The data file is the benchmark's own table (Parquet or a `datasets` export) with columns index, question (the
options are part of its text), image, answer (the option letter) and category. Responses are JSONL rows
{"index", "response"}.

The option letter is read from a free-form answer by one rule, without an LLM: the letters an answer names as an
option are collected from
  - the whole answer being one letter, maybe bracketed or followed by a period: "B", "(B)", "B.", "**B**";
  - a leading option label: "B. The suitcase ...", "B) ...", "B: ...";
  - "(B)" anywhere;
  - "answer", "option" or "choice" followed by the letter, "is" and ":" allowed between: "The answer is B",
    "Answer: (C)", "option D".
Letters are upper case only (the article "a" is never option A). Exactly one distinct letter is the prediction;
an answer naming none, or several different ones, is wrong and counted apart as `unparsed`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rlaifv.eval.benchfiles import BadBenchmarkFile, read_jsonl, read_table

COLUMNS = ("index", "question", "answer", "category")
PROMPT_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
EXTRACTION = ("one rule, no LLM: the distinct upper-case option letters an answer names (the whole answer, a "
              "leading 'B.', 'B)', 'B:', '(B)' anywhere, 'answer/option/choice (is) (:) B'); exactly one is the "
              "prediction, none or several are wrong and counted as unparsed")


def extract_choice(text: str, letters: str = "ABCD") -> str | None:
    """The one option letter a free-form answer names by the rule of the module note, else None."""
    t = text.strip()
    ls = f"[{letters}]"
    found = set()
    whole = re.fullmatch(rf"[\s(\[*\"']*({ls})[\s)\]*\"'.,:]*", t)
    if whole:
        found.add(whole.group(1))
    lead = re.match(rf"[(\[]?({ls})[)\].:](?:\s|$)", t)
    if lead:
        found.add(lead.group(1))
    found.update(re.findall(rf"\(({ls})\)", t))
    found.update(re.findall(rf"(?i:answer|option|choice)(?:\s+(?i:is))?\s*:?\s*[(\[*]*({ls})\b", t))
    return found.pop() if len(found) == 1 else None


def load_questions(path: Path) -> dict[str, dict[str, Any]]:
    """{str(index): row} of the MMStar table, images not loaded."""
    rows = read_table(path, "MMStar data (index, question, image, answer, category)", COLUMNS)
    questions: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = str(row["index"])
        if key in questions:
            raise BadBenchmarkFile(f"{path}: index {key} occurs twice")
        questions[key] = row
    return questions


def read_responses(path: Path, questions: dict[str, dict[str, Any]]) -> dict[str, str]:
    """{str(index): response}; an index the data does not have, or one answered twice, is an error."""
    rows = read_jsonl(path, "responses to MMStar: JSONL rows with index and response", required=("index", "response"))
    answers: dict[str, str] = {}
    for number, row in enumerate(rows, 1):
        key = str(row["index"])
        if key not in questions:
            raise BadBenchmarkFile(f"{path}, line {number}: index {key} is not in the MMStar data")
        if key in answers:
            raise BadBenchmarkFile(f"{path}, line {number}: index {key} answered twice")
        answers[key] = "" if row["response"] is None else str(row["response"])
    return answers


def _accuracy(predictions: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(predictions)
    return {"n": n, "accuracy": sum(p["correct"] for p in predictions) / n if n else None,
            "unparsed": sum(p["predicted"] is None for p in predictions)}


def mmstar_scores(questions: dict[str, dict[str, Any]], answers: dict[str, str]) -> dict[str, Any]:
    """Accuracy (a fraction) over the answered questions, overall and per category; unparsed answers count wrong."""
    letters = "".join(sorted(set("ABCD") | {str(q["answer"]).strip().upper() for q in questions.values()}))
    predictions = []
    for key, response in answers.items():
        q = questions[key]
        predicted = extract_choice(response, letters)
        predictions.append({"index": q["index"], "category": str(q["category"]), "predicted": predicted,
                            "answer": str(q["answer"]).strip().upper(),
                            "correct": predicted == str(q["answer"]).strip().upper()})
    per_category: dict[str, list[dict[str, Any]]] = {}
    for p in predictions:
        per_category.setdefault(p["category"], []).append(p)
    return {**_accuracy(predictions),
            "per_category": {c: _accuracy(ps) for c, ps in sorted(per_category.items())},
            "n_unanswered": len(questions) - len(answers), "extraction": EXTRACTION,
            "predictions": [{k: p[k] for k in ("index", "predicted", "answer")} for p in predictions]}
