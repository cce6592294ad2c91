"""CHAIR and Object HalBench (REFERENCE 8): which COCO objects a response names that are not in its image.

Objects are found by the rules of the original CHAIR code (Rohrbach et al. 2018): lowercase, word tokens,
singularize, merge two-word phrases ("hot dog", "teddy bear"; "baby"/"adult" + animal -> the animal; "passenger
jet/train" -> jet/train; "toilet seat" -> toilet), drop "seat" when "toilet" is in the same response, then map each
remaining word through the synonym list (one line per category, first entry canonical). Published Object HalBench
numbers instead let a chat LLM list the objects of each response and map that list with the same synonym step
(`extract="llm"`, see `extract_objects`). Ground truth per image = its instance categories plus the categories
named in its reference captions.

    CHAIRs        = responses with >= 1 hallucinated mention / responses
    CHAIRs_refine = responses with >= 1 hallucinated mention / responses with >= 1 mention  (ObjHal "response")
    CHAIRi        = hallucinated mentions / mentions, pooled over responses, repeats counted  (ObjHal "mention")
    recall        = sum over responses of |distinct correct categories| / sum of |ground-truth set|
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from rlaifv.eval.benchfiles import BadBenchmarkFile, load_json, read_jsonl, require_file
from rlaifv.eval.textnorm import normalize_phrase, normalized_tokens

# Qualifiers that would fire "person" ("baby", "adult", "passenger") in front of an animal or vehicle: the phrase
# stands for the animal or vehicle. "cub" and "animal" are no COCO category, so "baby cub" names nothing.
ANIMAL_WORDS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
VEHICLE_WORDS = ("jet", "train")
# Phrases that contain a category word but name something else: merged, then dropped as no category.
NON_OBJECT_PHRASES = ("home plate", "train track")
SPECIAL_PHRASES = {"bow tie": "tie", "toilet seat": "toilet"}

NORMALIZER = ("regex word tokens + rule-based singularizer (rlaifv.eval.textnorm); the reference uses NLTK's "
              "tokenizer with pattern.en.singularize / WordNet lemmas; phrases up to the longest synonym entry")


def default_synonyms_path() -> Path:
    """The synonym list shipped with the package (the original CHAIR list, BSD-2-Clause, header has provenance)."""
    return Path(str(resources.files("rlaifv.eval").joinpath("data/coco_synonyms.txt")))


def read_synonyms(path: Path) -> list[list[str]]:
    """Lines of comma-separated entries, first canonical; "#" lines are comments; entries stripped, empties dropped.

    (The original splits on ", " and keeps stray spaces, so its entry " motor bike" could never match.)
    """
    require_file(path, "synonym list: one line per category, comma-separated, first entry canonical")
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#"):
            continue
        entries = [e.strip().lower() for e in line.split(",") if e.strip()]
        if entries:
            lines.append(entries)
    if not lines:
        raise BadBenchmarkFile(f"{path}: no synonym lines")
    return lines


@dataclass(frozen=True)
class Vocabulary:
    """Normalized words and phrases -> COCO category; phrase table for merging."""

    categories: tuple[str, ...]  # canonical names, in file order
    word_to_category: Mapping[str, str]  # normalized entry ("teddy bear", "puppy") -> canonical category
    phrases: Mapping[tuple[str, ...], str]  # normalized multi-word phrase -> the word it stands for
    max_phrase: int  # longest phrase, in words

    @classmethod
    def load(cls, path: Path | None = None) -> Vocabulary:
        lines = read_synonyms(path or default_synonyms_path())
        word_to_category: dict[str, str] = {}
        for entries in lines:
            for entry in entries:
                word_to_category[normalize_phrase(entry)] = entries[0]  # a later line wins, as in the original
        phrases: dict[tuple[str, ...], str] = {}
        for word in list(word_to_category) + list(NON_OBJECT_PHRASES):
            if " " in word:
                phrases[tuple(normalize_phrase(word).split())] = normalize_phrase(word)
        for animal in ANIMAL_WORDS:
            phrases[("baby", animal)] = phrases[("adult", animal)] = animal
        for vehicle in VEHICLE_WORDS:
            phrases[("passenger", vehicle)] = vehicle
        for phrase, word in SPECIAL_PHRASES.items():
            phrases[tuple(phrase.split())] = word
        return cls(tuple(e[0] for e in lines), word_to_category, phrases, max(len(p) for p in phrases))

    def category(self, name: str) -> str | None:
        """The category a name (an annotation's category name, an extracted object) stands for, if any."""
        return self.word_to_category.get(normalize_phrase(name))


class ObjectMatcher:
    """Finds the COCO objects a text mentions, every mention in order, as (word, category) pairs."""

    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab
        self._starts = frozenset(p[0] for p in vocab.phrases)  # most words start no phrase: one set lookup

    def merge(self, words: Sequence[str]) -> list[str]:
        """Replace phrases by the word they stand for, longest phrase first, left to right."""
        phrases, longest = self.vocab.phrases, self.vocab.max_phrase
        out, i = [], 0
        while i < len(words):
            if words[i] not in self._starts:
                out.append(words[i])
                i += 1
                continue
            for n in range(min(longest, len(words) - i), 1, -1):
                word = phrases.get(tuple(words[i : i + n]))
                if word is not None:
                    out.append(word)
                    i += n
                    break
            else:
                out.append(words[i])
                i += 1
        return out

    def _known(self, words: list[str]) -> list[tuple[str, str]]:
        if "toilet" in words and "seat" in words:  # "the seat of the toilet" is no chair
            words = [w for w in words if w != "seat"]
        table = self.vocab.word_to_category
        return [(w, table[w]) for w in words if w in table]

    def mentions(self, text: str) -> list[tuple[str, str]]:
        """(word, category) for every object mention in a free text."""
        return self._known(self.merge(normalized_tokens(text)))

    def mentions_of_objects(self, objects: Iterable[str]) -> list[tuple[str, str]]:
        """(word, category) for a list of object names from an extractor LLM, each name once per response (as the
        Object HalBench script keeps unique extracted objects); a name naming no category contributes nothing."""
        words: list[str] = []
        for name in objects:
            for word in self.merge(normalized_tokens(str(name))):
                if word not in words:
                    words.append(word)
        return self._known(words)


# ---------------------------------------------------------------- ground truth


def image_key(image_id: Any) -> str:
    """One key for 42, "42" and "000042": COCO ids are ints, responses files often carry strings."""
    text = str(image_id).strip()
    return str(int(text)) if text.isdigit() else text


def ground_truth_from_jsonl(path: Path, vocab: Vocabulary, matcher: ObjectMatcher) -> dict[str, set[str]]:
    """{image: categories} from G.jsonl rows {"image_id", "instances": [category names], "captions": [...]}."""
    gt: dict[str, set[str]] = {}
    rows = read_jsonl(path, "ground truth: one JSON object per image with image_id, instances, captions",
                      required=("image_id",))
    for number, row in enumerate(rows, 1):
        objects = gt.setdefault(image_key(row["image_id"]), set())
        for name in row.get("instances", []):
            category = vocab.category(name)
            if category is None:
                raise BadBenchmarkFile(f"{path}, row {number}: instance {name!r} is not in the synonym list")
            objects.add(category)
        for caption in row.get("captions", []):
            objects.update(c for _, c in matcher.mentions(caption))
    return gt


COCO_FILES = ("instances_train2014.json", "instances_val2014.json",
              "captions_train2014.json", "captions_val2014.json")


def ground_truth_from_coco(coco_dir: Path, images: set[str], vocab: Vocabulary,
                           matcher: ObjectMatcher) -> dict[str, set[str]]:
    """{image: categories} for the given images from COCO 2014's instance and caption annotations (train + val)."""
    paths = [require_file(Path(coco_dir) / name, "COCO 2014 annotations (annotations_trainval2014.zip)")
             for name in COCO_FILES]
    gt: dict[str, set[str]] = {key: set() for key in images}
    for path in paths[:2]:
        data = load_json(path, "COCO instance annotations")
        names = {c["id"]: c["name"] for c in data["categories"]}
        for ann in data["annotations"]:
            key = image_key(ann["image_id"])
            if key in gt:
                category = vocab.category(names[ann["category_id"]])
                if category is None:
                    raise BadBenchmarkFile(f"{path}: category {names[ann['category_id']]!r} is not in the synonyms")
                gt[key].add(category)
    for path in paths[2:]:
        for ann in load_json(path, "COCO caption annotations")["annotations"]:
            key = image_key(ann["image_id"])
            if key in gt:
                gt[key].update(c for _, c in matcher.mentions(ann["caption"]))
    return gt


# ---------------------------------------------------------------- responses and scores


def read_responses(path: Path) -> list[dict[str, Any]]:
    """R.jsonl rows {"image_id", "response"} (other keys, such as the question, are kept and ignored)."""
    rows = read_jsonl(path, "responses: one JSON object per line with image_id and response",
                      required=("image_id", "response"))
    if not rows:
        raise BadBenchmarkFile(f"{path}: no responses")
    return rows


def chair_scores(
    responses: Sequence[Mapping[str, Any]], mentions: Sequence[list[tuple[str, str]]], gt: Mapping[str, set[str]],
    source: str = "responses",
) -> dict[str, Any]:
    """The CHAIR family over responses whose mentions are already found (rules or LLM). Rates are fractions;
    a rate whose denominator is zero (no mention at all) is None."""
    n_hall_resp = n_obj_resp = n_mentions = n_hall = n_correct = n_gt = 0
    per_response = []
    for row, found in zip(responses, mentions, strict=True):
        key = image_key(row["image_id"])
        if key not in gt:
            raise BadBenchmarkFile(f"{source}: image_id {row['image_id']!r} has no ground truth")
        truth = gt[key]
        hallucinated = [[w, c] for w, c in found if c not in truth]
        n_mentions += len(found)
        n_hall += len(hallucinated)
        n_obj_resp += bool(found)
        n_hall_resp += bool(hallucinated)
        n_correct += len({c for _, c in found if c in truth})
        n_gt += len(truth)
        per_response.append({"image_id": row["image_id"], "mentions": [[w, c] for w, c in found],
                             "hallucinated": hallucinated})
    n = len(per_response)
    return {
        "chair_s": n_hall_resp / n if n else None,
        "chair_s_refine": n_hall_resp / n_obj_resp if n_obj_resp else None,
        "chair_i": n_hall / n_mentions if n_mentions else None,
        "recall": n_correct / n_gt if n_gt else None,
        "n_responses": n,
        "n_responses_with_objects": n_obj_resp,
        "n_mentions": n_mentions,
        "n_hallucinated": n_hall,
        "per_response": per_response,
    }


# ---------------------------------------------------------------- LLM extraction (published Object HalBench)

EXTRACT_PROMPT = (
    "Here is a question about an image and an answer to it.\n\n"
    "Question: {question}\n"
    "Answer: {answer}\n\n"
    "Take the answer as true and list every physical object that it says is visible in the image. Rules:\n"
    "1. Only objects the answer names explicitly; do not add objects of your own.\n"
    "2. Only the object's name, without attributes such as color, size, material or count.\n"
    "3. Write each object once.\n"
    'Reply with a JSON list of strings and nothing else, for example ["dog", "frisbee"]; reply [] if the answer '
    "names no visible object."
)
SHORT_ANSWER_WORDS = 3  # answers this short are taken to name no object, without a call (as the ObjHal script)

_FENCED = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def parse_object_list(answer: str) -> list[str] | None:
    """The JSON list of strings in an extractor's answer (bare, fenced in ```json, or on the last line), or None."""
    candidates = [m.group(1) for m in _FENCED.finditer(answer)] + [answer]
    candidates += [line for line in reversed(answer.strip().splitlines()) if line.strip().startswith("[")]
    if "[" in answer and "]" in answer:
        candidates.append(answer[answer.index("[") : answer.rindex("]") + 1])
    for text in candidates:
        try:
            value = json.loads(text.strip())
        except json.JSONDecodeError:
            continue
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    return None


def extraction_jobs(responses: Sequence[Mapping[str, Any]]) -> list[tuple[int, str, dict[str, Any]]]:
    """(row index, prompt, extra) for every response long enough to name objects."""
    jobs = []
    for i, row in enumerate(responses):
        answer = str(row["response"]).strip()
        if len(answer.split()) > SHORT_ANSWER_WORDS:
            prompt = EXTRACT_PROMPT.format(question=str(row.get("question", "Describe the image.")), answer=answer)
            jobs.append((i, prompt, {"image_id": row["image_id"]}))
    return jobs


def llm_mentions(responses: Sequence[Mapping[str, Any]], matcher: ObjectMatcher, chat, cache: Path,
                 attempts: int = 3) -> tuple[list[list[tuple[str, str]]], int]:
    """Mentions per response from an extractor LLM's object lists, and how many answers never parsed.

    Answers are cached in `cache` (JSONL, one line per response index) and reused on a rerun. An answer that is
    not a JSON list is asked again, up to `attempts` times in all; one still unreadable counts as naming no object
    and is reported in the result, never dropped silently.
    """
    from rlaifv.eval.benchfiles import JsonlLog
    from rlaifv.eval.llm_calls import run_calls

    jobs = extraction_jobs(responses)
    log = JsonlLog(cache, "index")
    for attempt in range(attempts):
        run_calls(chat, log, jobs, "answer", "extracting objects")
        bad = [key for key, _, _ in jobs if parse_object_list(log.rows[key]["answer"]) is None]
        if not bad or attempt == attempts - 1:
            break
        for key in bad:
            log.forget(key)
    mentions, failed = [], 0
    for i in range(len(responses)):
        objects = parse_object_list(log.rows[i]["answer"]) if i in log else []
        failed += objects is None
        mentions.append(matcher.mentions_of_objects(objects or []))
    return mentions, failed


def evaluate(responses_path: Path, *, coco: Path | None = None, ground_truth: Path | None = None,
             synonyms: Path | None = None, chat=None, cache: Path | None = None) -> dict[str, Any]:
    """`rlaifv eval chair`: rules extraction, or LLM extraction when `chat` is given (answers cached in `cache`)."""
    if (coco is None) == (ground_truth is None):
        raise ValueError("give exactly one of --coco DIR and --ground-truth FILE")
    vocab = Vocabulary.load(synonyms)
    matcher = ObjectMatcher(vocab)
    rows = read_responses(responses_path)
    if ground_truth is not None:
        gt = ground_truth_from_jsonl(ground_truth, vocab, matcher)
    else:
        gt = ground_truth_from_coco(coco, {image_key(r["image_id"]) for r in rows}, vocab, matcher)
    failed = None
    if chat is None:
        mentions = [matcher.mentions(str(r["response"])) for r in rows]
    else:
        cache = cache or responses_path.with_name(responses_path.stem + ".objects.jsonl")
        mentions, failed = llm_mentions(rows, matcher, chat, cache)
    result = chair_scores(rows, mentions, gt, str(responses_path))
    extra: dict[str, Any] = {"extract": "rules" if chat is None else "llm", "normalizer": NORMALIZER,
                             "synonyms": str(synonyms or default_synonyms_path())}
    if failed is not None:
        extra |= {"extractions": str(cache), "n_extraction_failed": failed}
    per_response = result.pop("per_response")
    return {**result, **extra, "per_response": per_response}
