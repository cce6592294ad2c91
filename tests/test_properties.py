"""Property-based tests of every reader of model or user text: arbitrary input gives a result or the project's
BadInput (a quarantined record with a reason), never another exception; model output is data, never a format string.

Hypothesis draws the text (unicode, control characters, list markers, braces, very long lines); each property says
what must hold for all of it. A failure prints the smallest input that breaks the property.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from rlaifv.config import ClaimsConfig, CollectConfig, DPOConfig, JudgeConfig, SampleConfig
from rlaifv.eval.bench_generate import yes_no_answer
from rlaifv.eval.mmhal import parse_rating
from rlaifv.prompts import prompt_from_row, read_prompt_rows
from rlaifv.records import BadInput, Prompt
from rlaifv.text.formats import (
    QUESTIONS_PROMPT,
    STATEMENTS_PROMPT,
    numbered,
    pair_claims,
    parse_bullets,
    read_statements,
    strip_suffix,
)
from rlaifv.text.rules import RuleSplitter, question, statements

# Text as models write it, and worse: any unicode, list markers, newlines, braces, "Answer yes or no." tails.
MODEL_TEXT = st.one_of(
    st.text(max_size=400),
    st.lists(st.sampled_from(["1.", "2)", "(3)", "-", "*", "•", "none", "None.", "Rating: 4", "rating: 7", "{0}",
                              "{response}", "Yes", "no,", "\n", " ", "The cat is red.", "There is a dog.",
                              "Answer yes or no.", "**Statements:**", "---", "\x00", "é", "猫"]),
             max_size=40).map(" ".join),
)
# derandomize: the same examples every run, so CI is deterministic; a new property failure is a real finding
PROPS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow])
CLEAN_ITEM = st.text(alphabet=string.ascii_letters + string.digits + " ,.'", min_size=1, max_size=60).map(
    str.strip).filter(lambda s: any(c.isalnum() for c in s) and not s.endswith(":") and s[0].isalpha())


@PROPS
@given(st.lists(CLEAN_ITEM, min_size=1, max_size=12))
def test_a_numbered_list_reads_back_as_its_items(items):
    assert parse_bullets(numbered(items)) == items


@PROPS
@given(MODEL_TEXT, st.booleans())
def test_statement_output_gives_statements_or_bad_input(text, finished):
    try:
        got = read_statements(text, finished, 64)
    except BadInput:
        return
    assert got and all(isinstance(s, str) and s.strip() == s and s for s in got)


@PROPS
@given(st.lists(CLEAN_ITEM, min_size=1, max_size=6), MODEL_TEXT, st.booleans())
def test_question_output_pairs_by_position_or_is_bad_input(stated, text, finished):
    try:
        claims = pair_claims(stated, text, finished, 64)
    except BadInput:
        return
    assert [s for s, _ in claims] == stated and all(q for _, q in claims)


@PROPS
@given(MODEL_TEXT)
def test_stripping_the_yes_no_suffix_is_idempotent(text):
    once = strip_suffix(text)
    assert strip_suffix(once) == once


def test_a_repeated_yes_no_suffix_is_stripped_whole():  # found by the property above
    assert strip_suffix("Is there a dog? Answer yes or no. Answer yes or no.") == "Is there a dog?"
    assert strip_suffix("Answer yes or noAnswer yes or no") == ""


@PROPS
@given(MODEL_TEXT)
def test_the_rule_splitter_gives_claims_or_a_reason(text):
    (result,) = RuleSplitter(max_words=120).split([("Describe the image.", text)])
    if isinstance(result, BadInput):
        assert str(result)
        return
    assert result and all(s and q.endswith("?") for s, q in result)
    assert all(question(s).endswith("?") for s in statements(text))


@PROPS
@given(MODEL_TEXT)
def test_a_judge_rating_is_one_of_0_to_6(text):
    assert parse_rating(text) in range(7)


@PROPS
@given(st.integers(0, 6), MODEL_TEXT)
def test_a_single_stated_rating_is_read(rating, noise):
    noise = noise.lower().replace("rating:", "")
    assert parse_rating(f"{noise}\nRating: {rating}") == rating


@PROPS
@given(MODEL_TEXT)
def test_a_yes_no_answer_is_yes_no_or_none(text):
    assert yes_no_answer(text) in ("Yes", "No", None)


@PROPS
@given(MODEL_TEXT, MODEL_TEXT)
def test_model_output_is_data_in_a_prompt_never_a_format_string(instruction, response):
    prompt = STATEMENTS_PROMPT.format(instruction=instruction, response=response)
    assert f"Question: {instruction}\nAnswer: {response}\n" in prompt
    assert numbered([response.replace("\n", " ") or "x"]) in QUESTIONS_PROMPT.format(
        statements=numbered([response.replace("\n", " ") or "x"]))


# ---------------------------------------------------------------- user files

SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=8), inner, max_size=3), max_leaves=8)
ROWS = st.dictionaries(st.sampled_from(["id", "image", "question", "images", "prompt", "x", "meta"]), JSON_VALUES,
                       max_size=5)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(ROWS.map(json.dumps), st.text(max_size=30).filter(lambda s: "\n" not in s and "\r" not in s)),
                max_size=8))
def test_every_prompt_file_line_is_a_prompt_or_a_reason(tmp_path_factory, lines):
    folder = tmp_path_factory.mktemp("prompts")
    path = folder / "p.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    rows = list(read_prompt_rows(path))
    assert len(rows) == len([line for line in lines if line.encode().strip()])  # only ASCII-blank lines are skipped
    for row in rows:
        try:
            prompt = prompt_from_row(row, "test", folder)
        except BadInput as exc:
            assert str(exc)
        else:
            assert isinstance(prompt, Prompt) and prompt.question.strip()


@pytest.mark.parametrize("model", [CollectConfig, SampleConfig, ClaimsConfig, JudgeConfig, DPOConfig])
@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(key=st.text(alphabet=string.ascii_lowercase + "_", min_size=3, max_size=20), value=JSON_VALUES)
def test_a_config_with_an_unknown_key_is_refused_by_name(model, key, value):
    if key in model.model_fields:
        return
    with pytest.raises(ValidationError, match=key):
        model.model_validate({key: value})


def test_the_properties_run_on_the_shipped_formats():
    # the readers are the ones the stages use: a planted format string in a response stays text
    assert "{instruction}" in STATEMENTS_PROMPT.format(instruction="{instruction}", response="{0}")
    assert Path(__file__).exists()
