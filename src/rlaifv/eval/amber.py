"""AMBER (Wang et al. 2023; REFERENCE 8): generative CHAIR / Cover / Hal / Cog, discriminative yes/no accuracy,
precision, recall and F1 with "No" as the positive class, and the AMBER score (100 - CHAIR + F1) / 2.

Numbers are computed the way AMBER's own `inference.py` computes them, so they compare with published ones: its
counters start at the values in `data/metrics.txt` (0.001 for every denominator), each percentage is
`round(100 * x, 1)`, and F1 is computed from the already rounded precision and recall (with +0.001 in the
denominator for existence, +0.0001 elsewhere). A discriminative answer counts as "Yes" or "No" only when it is
exactly that string; anything else is wrong.

One difference cannot be avoided: AMBER finds the nouns of a description with NLTK's POS tagger and WordNet
lemmatizer and also accepts a noun whose spaCy `en_core_web_lg` vector is similar (> 0.8) to an annotated object.
Neither the tagger's data nor the vectors can be installed from PyPI, so here every token is lemmatized (rlaifv's
singularizer) and kept when it is in AMBER's object vocabulary, matched exactly. The output says so
(`noun_extraction`); docs/evaluation.md explains what it changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlaifv.eval.benchfiles import BadBenchmarkFile, load_json, read_jsonl, require_file
from rlaifv.eval.textnorm import normalize_phrase, normalized_tokens

NOUN_EXTRACTION = ("lemmatized tokens matched exactly against AMBER's object vocabulary (no POS tagger, no "
                   "word-vector similarity); AMBER's inference.py uses NLTK POS tags and spaCy vectors > 0.8")

# Counter prefix of each discriminative type in AMBER's metrics.txt; any other type counts as relation ("asso").
TYPE_PREFIX = {
    "discriminative-hallucination": "ha_qa",
    "discriminative-attribute-state": "as_qa",
    "discriminative-attribute-number": "an_qa",
    "discriminative-attribute-action": "aa_qa",
}
RELATION_PREFIX = "asso_qa"
PARTS = {"overall": ("qa",), "existence": ("ha_qa",), "attribute": ("as_qa", "an_qa", "aa_qa"),
         "relation": (RELATION_PREFIX,)}
F1_EPS = {"existence": 0.001}  # AMBER's script; 0.0001 for the other parts
F1_EPS_DEFAULT = 0.0001
FILES = {
    "annotations": ("data/annotations.json", "AMBER ground truth of every query id"),
    "relation": ("data/relation.json", "AMBER object vocabulary and associated words"),
    "safe_words": ("data/safe_words.txt", "AMBER words never counted as hallucinations"),
    "metrics": ("data/metrics.txt", "AMBER's initial counter values"),
}


@dataclass(frozen=True)
class AmberData:
    """AMBER's annotation files, with every word normalized like the responses' tokens."""

    annotations: Mapping[int, Mapping[str, Any]]  # query id -> {"type", "truth", ("hallu")}
    association: Mapping[str, list[str]]  # object -> words that also count as that object
    vocabulary: frozenset[str]  # every object word AMBER knows (keys and associated words)
    safe_words: frozenset[str]  # nouns that are never hallucinations ("light", "sign", ...)
    initial: Mapping[str, float]  # counter start values from metrics.txt

    @classmethod
    def load(cls, amber_dir: Path) -> AmberData:
        root = Path(amber_dir)
        paths = {name: require_file(root / rel, what) for name, (rel, what) in FILES.items()}
        annotations = {int(a["id"]): a for a in load_json(paths["annotations"], FILES["annotations"][1])}
        raw = load_json(paths["relation"], FILES["relation"][1])
        association = {normalize_phrase(k): [normalize_phrase(w) for w in v] for k, v in raw.items()}
        vocabulary = frozenset(association) | {w for words in association.values() for w in words}
        safe = paths["safe_words"].read_text(encoding="utf-8").splitlines()
        return cls(annotations, association, vocabulary, frozenset(normalize_phrase(w) for w in safe if w.strip()),
                   read_initial_counters(paths["metrics"]))


def read_initial_counters(path: Path) -> dict[str, float]:
    """`name=value` lines of AMBER's metrics.txt."""
    counters = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if "=" not in line:
            continue
        name, _, value = line.partition("=")
        try:
            counters[name.strip()] = float(value)
        except ValueError:
            raise BadBenchmarkFile(f"{path}, line {number}: {value.strip()!r} is not a number") from None
    return counters


def read_responses(path: Path, data: AmberData) -> list[dict[str, Any]]:
    """R.jsonl rows {"id": AMBER query id, "response"}; an unknown or repeated id is an error, never skipped."""
    rows = read_jsonl(path, "responses: one JSON object per line with id and response", required=("id", "response"))
    seen: set[int] = set()
    for number, row in enumerate(rows, 1):
        qid = int(row["id"])
        if qid not in data.annotations:
            raise BadBenchmarkFile(f"{path}, line {number}: id {qid} is not an AMBER query id")
        if qid in seen:
            raise BadBenchmarkFile(f"{path}, line {number}: id {qid} answered twice")
        seen.add(qid)
        row["id"] = qid
    return rows


class _Counters(dict):
    """AMBER's named counters, starting at metrics.txt's values; a name missing there starts at 0."""

    def __missing__(self, key: str) -> float:
        return 0


def _index(words: Sequence[str], association: Mapping[str, list[str]]) -> dict[str, int]:
    """word -> index of the annotated object it counts for: associated words first (in object order), then the
    objects themselves; the first match wins, as AMBER's list search does."""
    where: dict[str, int] = {}
    for idx, word in enumerate(words):
        for w in association.get(word, []):
            where.setdefault(w, idx)
    for idx, word in enumerate(words):
        where.setdefault(word, idx)
    return where


def _generative(m: _Counters, response: str, ann: Mapping[str, Any], data: AmberData) -> None:
    nouns = [t for t in normalized_tokens(response) if t in data.vocabulary]
    truth = [normalize_phrase(w) for w in ann["truth"]]
    hallu = [normalize_phrase(w) for w in ann["hallu"]]
    truth_at, hallu_at = _index(truth, data.association), _index(hallu, data.association)
    covered, cognized = [0] * len(truth), [0] * len(hallu)
    hallucinated = 0
    for noun in nouns:
        if noun in data.safe_words:
            continue
        if noun in truth_at:
            covered[truth_at[noun]] = 1
            continue
        if noun in hallu_at:
            cognized[hallu_at[noun]] = 1
        hallucinated += 1
    m["chair_score"] += hallucinated
    m["chair_num"] += len(nouns)
    m["safe_cover_score"] += sum(covered)
    m["safe_cover_num"] += len(truth)
    m["hallu_cover_score"] += sum(cognized)
    m["hallu_cover_num"] += len(hallu)
    if hallucinated == 0:
        m["non_hallu_score"] += 1
    m["non_hallu_num"] += 1


def _discriminative(m: _Counters, response: str, ann: Mapping[str, Any]) -> None:
    prefixes = ("qa", TYPE_PREFIX.get(ann["type"], RELATION_PREFIX))
    truth = ann["truth"]
    for p in prefixes:
        m[f"{p}_correct_num"] += 1
        if truth == "yes":
            if response == "Yes":
                m[f"{p}_correct_score"] += 1
        else:
            m[f"{p}_no_num"] += 1
            if response == "No":
                m[f"{p}_correct_score"] += 1
                m[f"{p}_no_score"] += 1
        if response == "No":
            m[f"{p}_ans_no_num"] += 1
            if truth == "no":
                m[f"{p}_ans_no_score"] += 1


def _percent(m: _Counters, prefixes: Sequence[str], score: str, num: str) -> float:
    return round(sum(m[f"{p}_{score}"] for p in prefixes) / sum(m[f"{p}_{num}"] for p in prefixes) * 100, 1)


def f1_rounded(precision: float, recall: float, eps: float) -> float:
    """AMBER's F1 from percentages already rounded to one decimal, taken back as fractions."""
    p, r = precision / 100, recall / 100
    return round(2 * p * r / (p + r + eps) * 100, 1)


def amber_scores(responses: Sequence[Mapping[str, Any]], data: AmberData) -> dict[str, Any]:
    """Every AMBER number the responses allow; a part without responses is left out."""
    m = _Counters(data.initial)
    n_gen = 0
    answered: dict[str, int] = {part: 0 for part in PARTS}
    for row in responses:
        ann = data.annotations[int(row["id"])]
        response = "" if row["response"] is None else str(row["response"])
        if ann["type"] == "generative":
            _generative(m, response, ann, data)
            n_gen += 1
            continue
        _discriminative(m, response, ann)
        prefix = TYPE_PREFIX.get(ann["type"], RELATION_PREFIX)
        answered["overall"] += 1
        answered[next(part for part, ps in PARTS.items() if part != "overall" and prefix in ps)] += 1
    out: dict[str, Any] = {}
    disc = {}
    for part, prefixes in PARTS.items():
        if not answered[part]:
            continue
        precision = _percent(m, prefixes, "ans_no_score", "ans_no_num")
        recall = _percent(m, prefixes, "no_score", "no_num")
        disc[part] = {"accuracy": _percent(m, prefixes, "correct_score", "correct_num"), "precision": precision,
                      "recall": recall, "f1": f1_rounded(precision, recall, F1_EPS.get(part, F1_EPS_DEFAULT))}
    if disc:
        out["discriminative"] = disc
    if n_gen:
        out["generative"] = {
            "chair": round(m["chair_score"] / m["chair_num"] * 100, 1),
            "cover": round(m["safe_cover_score"] / m["safe_cover_num"] * 100, 1),
            "hal": round(100 - m["non_hallu_score"] / m["non_hallu_num"] * 100, 1),
            "cog": round(m["hallu_cover_score"] / m["hallu_cover_num"] * 100, 1),
        }
        out["noun_extraction"] = NOUN_EXTRACTION
    if "generative" in out and "overall" in disc:
        out["amber_score"] = round((100 - out["generative"]["chair"] + disc["overall"]["f1"]) / 2, 2)
    out["n_responses"] = {"generative": n_gen, "discriminative": answered["overall"]}
    # yes/no answers `rlaifv eval generate` cut to their first word (it keeps the full text in raw_response)
    out["n_mapped_yes_no"] = sum(1 for row in responses if "raw_response" in row)
    return out
