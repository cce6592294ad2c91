"""The two-call splitter's text: its prompts, the numbered lists it writes, and how its outputs are read back.

RLAIF-V (REFERENCE 2) splits a response with two LLM calls: (a) list the self-contained factual statements of a
question-answer pair; (b) rewrite those statements as yes/no questions, one per statement. This module is the text
side of both calls, with no model: the default prompts, `numbered` lists (how call (b) sees the statements and how
the world's splitter answers), and the strict readers of the outputs (`read_statements`, `pair_claims`). The
splitters that run a model (`rlaifv.feedback.split_llm`) and the world's splitter LM that is trained on these
formats (`rlaifv.world.splitter`) both build on it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from rlaifv.records import BadInput
from rlaifv.text.rules import BULLET_RE, Claim, sentences

Unit = Literal["response", "sentence"]

# Call (a), unit "response". Fields: {instruction}, {response} (cut to max_words). Asks for the single word "none"
# when the answer asserts nothing, so that "no claims" and "unreadable output" stay distinguishable.
STATEMENTS_PROMPT = (
    "Below is a question about an image and an answer to it.\n\n"
    "Question: {instruction}\n"
    "Answer: {response}\n\n"
    "List every factual claim that the answer makes, as short self-contained statements: one statement per line, "
    'numbered "1.", "2.", ... Replace pronouns with the things they refer to, so that each statement can be '
    "understood on its own, and split statements about several objects into one statement per object. Leave out "
    "opinions, guesses and feelings. If the answer makes no factual claim, reply with the single word: none"
)
# Call (a), unit "sentence". Fields: {instruction}, {response} (the context) and {sentence} (the one to split).
SENTENCE_STATEMENTS_PROMPT = (
    "Below is a question about an image, an answer to it, and one sentence of that answer.\n\n"
    "Question: {instruction}\n"
    "Answer: {response}\n"
    "Sentence: {sentence}\n\n"
    "List every factual claim that this sentence makes, as short self-contained statements: one statement per "
    'line, numbered "1.", "2.", ... Replace pronouns with the things they refer to (the answer tells you what they '
    "are), and split statements about several objects into one statement per object. Leave out opinions, guesses "
    "and feelings. If the sentence makes no factual claim, reply with the single word: none"
)
# Call (b). Field: {statements}, call (a)'s statements as a numbered list. Negations kept, so "yes" always means
# "the claim holds".
QUESTIONS_PROMPT = (
    "Rewrite each statement below as a general yes/no question whose answer is yes exactly when the statement is "
    'true. Keep negations ("The cup is not red." becomes "Is the cup not red?"). Give exactly one question per '
    "statement, numbered like the statements, one question per line.\n\n"
    "Statements:\n{statements}"
)
DEFAULT_PROMPTS: dict[str, str] = {"response": STATEMENTS_PROMPT, "sentence": SENTENCE_STATEMENTS_PROMPT}
NO_CLAIMS = "none"
SETTINGS_FILE = "splitter.json"  # {"unit": ..., "statements_prompt": ..., "questions_prompt": ...} beside a model

_SUFFIX_RE = re.compile(r"\s*\(?(?:please\s+)?answer\s+(?:with\s+)?(?:yes\s+or\s+no|yes/no)\.?\)?\s*$", re.IGNORECASE)


class NoClaims(BadInput):
    """The splitter found nothing to check: fatal for a response, nothing to worry about for one sentence."""


def parse_bullets(text: str) -> list[str]:
    """The items of a list in a model's output, in order.

    Accepts "-", "*", "•", "1.", "1)" and "(1)" markers with any surrounding spaces; drops lines without a marker
    (headers like "Here are the statements:", trailing remarks), empty lines, empty items, markdown rules ("---")
    and marked headers ("**Statements:**"). A line that is not an item is never merged into one, so a model that
    drifts out of the format shows up as a count mismatch rather than as a silently wrong claim.
    """
    items = []
    for line in text.splitlines():
        m = BULLET_RE.match(line)
        if not m:
            continue
        item = line[m.end():].strip().strip("*_").strip()
        if item and not item.endswith(":") and any(ch.isalnum() for ch in item):
            items.append(item)
    return items


def numbered(items: Sequence[str]) -> str:
    """A numbered list, one item per line ("1. a\\n2. b"): how statements are shown to call (b) and how the world's
    splitter answers. Numbers give every line an anchor that the next list can align to."""
    return "\n".join(f"{i}. {item}" for i, item in enumerate(items, 1))


def response_sentences(response: str) -> list[str]:
    """The response's sentences, terminators kept and list markers dropped: the units of `unit="sentence"`."""
    return [body + terminator for body, terminator in sentences(response)]


def strip_suffix(question: str) -> str:
    """Drop every "Answer yes or no." the model may add at the end (it may repeat it): the caller appends the
    configured suffix itself, once."""
    question = question.strip()
    while (stripped := _SUFFIX_RE.sub("", question).strip()) != question:
        question = stripped
    return question


def read_statements(text: str, finished: bool, max_new_tokens: int) -> list[str]:
    """Statements from call (a)'s output; NoClaims for "none" or nothing, BadInput when it cannot be read."""
    if not finished:
        raise BadInput(f"statement output cut at max_new_tokens={max_new_tokens}: {text[-80:]!r}")
    stripped = text.strip()
    items = parse_bullets(stripped)
    if stripped.lower().strip(".! ") == NO_CLAIMS or [i.lower().strip(".! ") for i in items] == [NO_CLAIMS]:
        raise NoClaims("no claims found (the splitter answered 'none')")
    if not items:
        if not stripped:
            raise NoClaims("no claims found (empty statement output)")
        raise BadInput(f"unparsable statement output (no list): {stripped[:120]!r}")
    return items


def pair_claims(statements: list[str], text: str, finished: bool, max_new_tokens: int) -> list[Claim]:
    """Pair call (a)'s statements with call (b)'s questions by position; any count mismatch is BadInput."""
    if not finished:
        raise BadInput(f"question output cut at max_new_tokens={max_new_tokens}: {text[-80:]!r}")
    questions = [strip_suffix(q) for q in parse_bullets(text)]
    if len(questions) != len(statements):
        raise BadInput(
            f"statement/question count mismatch: {len(statements)} statements, {len(questions)} questions "
            f"(question output: {text.strip()[:120]!r})"
        )
    return list(zip(statements, questions))


def load_settings(path: str | Path) -> dict[str, str]:
    """How a model folder's splitter was trained to be called (`SETTINGS_FILE`), or {} (a hub id, a chat model)."""
    file = Path(path) / SETTINGS_FILE
    return json.loads(file.read_text()) if file.is_file() else {}
