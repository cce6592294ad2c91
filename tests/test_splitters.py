"""The divide step's two splitters: rules on hand-written and world English, the LLM splitter on real tiny models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlaifv.feedback.split_llm import LLMSplitter
from rlaifv.records import BadInput
from rlaifv.text.formats import pair_claims, parse_bullets, read_statements, strip_suffix
from rlaifv.text.rules import RuleSplitter, cut_words, existence_claim, with_existence_claims
from rlaifv.world.language import CaptionNoise, Mention, describe, noisy_caption, parse_mentions, true_mentions
from rlaifv.world.models import build_tokenizer
from rlaifv.world.scenes import sample_scenes
from rlaifv.world.splitter import (
    WORLD_QUESTIONS_PROMPT,
    WORLD_STATEMENTS_PROMPT,
    build_splitter,
    encode_conversation,
    sentence_conversations,
    splitter_examples,
    train_splitter,
    world_responses,
)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(0)


def rules(response: str, max_words: int = 300):
    return RuleSplitter(max_words).split([("Describe this image in detail.", response)])[0]


# ---------------------------------------------------------------- rule splitter, by hand


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("There is a small red fork on the left.",
         [("There is a small red fork on the left.", "Is there a small red fork on the left?")]),
        ("A big blue cup is in the center.",
         [("A big blue cup is in the center.", "Is a big blue cup in the center?")]),
        ("I can see a little white knife in the top right corner.",
         [("I can see a little white knife in the top right corner.",
           "Is there a little white knife in the top right corner?")]),
        ("I see an apple.", [("I see an apple.", "Is there an apple?")]),
        ("In the top left corner, there is a green tree.",
         [("In the top left corner, there is a green tree.", "Is there a green tree in the top left corner?")]),
        ("The image also shows a yellow star.", [("The image also shows a yellow star.", "Is there a yellow star?")]),
        ("Also, there is a big knife at the top.",
         [("There is a big knife at the top.", "Is there a big knife at the top?")]),
        ("In addition, the cup is red.", [("The cup is red.", "Is the cup red?")]),
        ("There are two cats.", [("There are two cats.", "Are there two cats?")]),
        ("The dogs are asleep.", [("The dogs are asleep.", "Are the dogs asleep?")]),
        ("The man holds an umbrella.",
         [("The man holds an umbrella.", "Is it true that the man holds an umbrella?")]),
        ("The man has a hat.", [("The man has a hat.", "Does the man have a hat?")]),
        ("The dog can swim.", [("The dog can swim.", "Can the dog swim?")]),
        # negations stay in the question, so "yes" means the statement holds
        ("There is no knife.", [("There is no knife.", "Is there no knife?")]),
        ("The cup isn't red.", [("The cup is not red.", "Is the cup not red?")]),
        ("I cannot see a spoon.", [("I cannot see a spoon.", "Is there no spoon?")]),
        # one statement per object, agreement fixed, a shared location given to each object
        ("There are a fork and a knife.", [("There is a fork.", "Is there a fork?"),
                                           ("There is a knife.", "Is there a knife?")]),
        ("There are a red fork, a knife, and two cups on the table.",
         [("There is a red fork on the table.", "Is there a red fork on the table?"),
          ("There is a knife on the table.", "Is there a knife on the table?"),
          ("There are two cups on the table.", "Are there two cups on the table?")]),
        ("A fork and a knife are on the left.", [("A fork is on the left.", "Is a fork on the left?"),
                                                 ("A knife is on the left.", "Is a knife on the left?")]),
        ("The picture shows a kitchen and two chairs.",
         [("The picture shows a kitchen.", "Is there a kitchen?"),
          ("The picture shows two chairs.", "Are there two chairs?")]),
        ("There is a black and white cat.", [("There is a black and white cat.", "Is there a black and white cat?")]),
        # clauses: each statement keeps (or recovers) its subject
        ("There is a red fork on the left, and there is a blue cup in the center.",
         [("There is a red fork on the left.", "Is there a red fork on the left?"),
          ("There is a blue cup in the center.", "Is there a blue cup in the center?")]),
        ("There is a fork and there is a knife.", [("There is a fork.", "Is there a fork?"),
                                                   ("There is a knife.", "Is there a knife?")]),
        ("There is a cup, and it is blue.", [("There is a cup.", "Is there a cup?"),
                                              ("The cup is blue.", "Is the cup blue?")]),
        ("The cup is blue and is on the left.", [("The cup is blue.", "Is the cup blue?"),
                                                 ("The cup is on the left.", "Is the cup on the left?")]),
        # separators: ; ! newlines, list markers; questions, headers and hedges are not claims
        ("The sky is blue; the sun is yellow!\n- There is a kite",
         [("The sky is blue.", "Is the sky blue?"), ("The sun is yellow.", "Is the sun yellow?"),
          ("There is a kite.", "Is there a kite?")]),
        ("Sure! Here is what I see:\nI think it is a park. There is a tree. It seems windy. Is it cold?",
         [("There is a tree.", "Is there a tree?")]),
        ("It is 2.5 meters tall.", [("It is 2.5 meters tall.", "Is it 2.5 meters tall?")]),
    ],
)
def test_rule_splitter_forms(response, expected):
    assert rules(response) == expected


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        ("", "empty response"),
        ("   \n ", "empty response"),
        ("I think it is a nice picture. It seems calm. Maybe a park?", "no claims found"),
        ("Sure!", "no claims found"),
    ],
)
def test_rule_splitter_bad_input(response, reason):
    result = rules(response)
    assert isinstance(result, BadInput)
    assert reason in str(result)


def test_rule_splitter_cuts_to_max_words():
    response = "There is a fork. There is a knife.\nThere is a cup."
    assert cut_words(response, 5) == "There is a fork. There"
    assert cut_words(response, 6) == "There is a fork. There is"
    assert cut_words(response, 100) == response
    assert [s for s, _ in rules(response, max_words=8)] == ["There is a fork.", "There is a knife."]


def test_rule_splitter_returns_one_result_per_item_in_order():
    out = RuleSplitter().split([("q", "There is a cup."), ("q", ""), ("q", "A ball is red.")])
    assert out[0] == [("There is a cup.", "Is there a cup?")]
    assert isinstance(out[1], BadInput)
    assert out[2] == [("A ball is red.", "Is a ball red?")]


# ---------------------------------------------------------------- rule splitter, world language


def test_rule_splitter_matches_parse_mentions_on_world_responses():
    """On every sentence form the world writes, the claims are exactly the mentioned objects with their attributes."""
    rng = np.random.default_rng(0)
    loud = CaptionNoise(size_mention_prob=0.5, position_mention_prob=0.5)
    splitter = RuleSplitter()
    checked = 0
    for scene in sample_scenes(0, "val", 150):
        responses = (noisy_caption(scene, rng), noisy_caption(scene, rng, loud), describe(true_mentions(scene), rng))
        for response in responses:
            claims = splitter.split_one("Describe this image.", response)
            per_statement = [parse_mentions(s) for s, _ in claims]
            assert all(len(m) == 1 for m in per_statement), (response, claims)
            assert [m[0] for m in per_statement] == parse_mentions(response)
            assert [parse_mentions(q) for _, q in claims] == per_statement
            assert all(q.endswith("?") and "answer yes or no" not in q.lower() for _, q in claims)
            checked += len(claims)
    assert checked > 1000


def test_rule_splitter_multi_object_world_sentence():
    claims = rules("There are a small red fork and a big white knife in the center.")
    assert [parse_mentions(s) for s, _ in claims] == [
        [Mention("fork", "red", "small", 4)], [Mention("knife", "white", "large", 4)]
    ]


# ---------------------------------------------------------------- existence claims


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("There is a large green box on the left.", ("There is a box.", "Is there a box?")),
        ("A large green tree is on the left.", ("There is a tree.", "Is there a tree?")),
        ("I can see a small red car at the top.", ("There is a car.", "Is there a car?")),
        ("In the bottom right corner, there is a big green cup.", ("There is a cup.", "Is there a cup?")),
        ("The image also shows an orange apple.", ("There is an apple.", "Is there an apple?")),
        ("There is a cup on the left.", ("There is a cup.", "Is there a cup?")),
        ("There are two red cups.", ("There are cups.", "Are there cups?")),
        ("There is a cup.", None),  # says no more than its existence already
        ("There is no red cup.", None),
        ("I cannot see a red cup.", None),
        ("The cup is red.", None),  # about an object introduced before
        ("A cup is not red.", None),
    ],
)
def test_existence_claim_forms(statement, expected):
    assert existence_claim(statement) == expected


def test_existence_claims_ask_once_per_object_beside_every_detailed_mention():
    """On world responses: every mention with a detail gets one bare existence claim of its category, placed before
    it, and no question is asked twice."""
    rng = np.random.default_rng(1)
    splitter = RuleSplitter()
    extra = 0
    for scene in sample_scenes(0, "val", 100):
        claims = splitter.split_one("Describe this image.", noisy_caption(scene, rng))
        marked = with_existence_claims(claims)
        both = [c for c, _ in marked]
        assert [c for c, added in marked if not added] == claims
        assert len({q for _, q in both}) == len(both)
        for statement, q in (c for c, added in marked if added):
            (mention,) = parse_mentions(q)
            assert mention == Mention(mention.category) and parse_mentions(statement) == [mention]
            later = [m for s, _ in both[both.index((statement, q)) + 1:] for m in parse_mentions(s)]
            assert mention.category in {m.category for m in later}
            extra += 1
        detailed = {m.category for s, _ in claims for m in parse_mentions(s) if m != Mention(m.category)}
        assert {parse_mentions(s)[0].category for (s, _), added in marked if added} == detailed
    assert extra > 100


def _truth_scores(scene, answers: dict[int, str], existence: bool) -> list:
    """Each answer's Scored with the scene's truth as the labeler, split by the rules (with existence claims)."""
    from rlaifv.feedback.pairs import score_candidates
    from rlaifv.records import Verdict
    from rlaifv.world.language import claim_holds

    verdicts = []
    for idx, text in answers.items():
        claims = RuleSplitter().split_one("Describe this image.", text)
        marked = with_existence_claims(claims) if existence else [(c, False) for c in claims]
        for i, ((statement, _), support) in enumerate(marked):
            holds = claim_holds(scene, parse_mentions(statement)[0])
            verdicts.append(Verdict.from_probs("p", idx, i, float(holds), float(not holds), support))
    return score_candidates(verdicts)


def test_existence_claims_let_keep_accepted_drop_a_pair_won_by_leaving_a_real_object_out():
    """A real object named with a wrong colour loses to leaving it out on the score either way; only with the
    existence claim does the naming answer keep more accepted claims, so `keep_accepted` drops the pair."""
    from rlaifv.feedback.pairs import eligible_pairs

    scene = next(s for s in sample_scenes(0, "val", 50) if len(s.objects) >= 2)
    truth = true_mentions(scene)
    recolored = Mention(truth[0].category, next(c for c in ("red", "blue") if c != truth[0].color), truth[0].size,
                        truth[0].cell)
    rng = np.random.default_rng(0)
    answers = {0: describe([recolored, *truth[1:]], rng), 1: describe(truth[1:], rng)}  # 1 leaves the object out
    for existence in (False, True):
        scored = _truth_scores(scene, answers, existence)
        assert [s.score for s in scored] == [-1.0, 0.0]  # the omission wins on the score with or without
        pairs = eligible_pairs(scored, answers, min_gap=1.0, keep_accepted=True)
        assert len(pairs) == (0 if existence else 1)


def test_an_absent_object_costs_one_rejection_with_existence_claims_too():
    """The existence claim of an invented object is rejected with its detailed claim; only the detailed one counts,
    so the score is the one the answer's own claims give."""
    scene = sample_scenes(0, "val", 1)[0]
    absent = next(c for c in ("cup", "tree", "car", "ball", "fork") if c not in scene.categories)
    rng = np.random.default_rng(0)
    truth = true_mentions(scene)
    answers = {0: describe([*truth, Mention(absent, "red", "small", 4)], rng)}
    plain, existence = _truth_scores(scene, answers, False), _truth_scores(scene, answers, True)
    assert plain[0].score == existence[0].score == -1.0
    # every real object's mention has details, so each adds one accepted existence claim
    assert existence[0].n_claims - existence[0].n_rejected == 2 * (plain[0].n_claims - plain[0].n_rejected)


# ---------------------------------------------------------------- parsing the LLM's output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- a cup.\n- a fork.", ["a cup.", "a fork."]),
        ("Here are the statements:\n\n* one\n*  two  \n\n", ["one", "two"]),
        ("  • one\n•two\n", ["one", "two"]),
        ("1. one\n2) two\n(3) three\n10. ten", ["one", "two", "three", "ten"]),
        ("**Statements:**\n- one\n---\n-   \n- two\nI hope this helps!", ["one", "two"]),
        ("There is a cup. There is a fork.", []),
        ("", []),
        ("- 2.5 meters\n3.5 meters is not a bullet", ["2.5 meters"]),
    ],
)
def test_parse_bullets(text, expected):
    assert parse_bullets(text) == expected


def test_read_statements_reasons():
    assert read_statements("Sure:\n- a\n- b", True, 9) == ["a", "b"]
    for text, finished, reason in [
        ("none", True, "no claims found"),
        ("- None.", True, "no claims found"),
        ("  ", True, "no claims found"),
        ("There is a cup.", True, "unparsable"),
        ("- a\n- b", False, "max_new_tokens=9"),
    ]:
        with pytest.raises(BadInput, match=reason):
            read_statements(text, finished, 9)


def test_pair_claims_reports_count_mismatch_never_truncates():
    statements = ["There is a cup.", "The cup is red."]
    assert pair_claims(statements, "- Is there a cup?\n- Is the cup red? Answer yes or no.", True, 9) == [
        ("There is a cup.", "Is there a cup?"), ("The cup is red.", "Is the cup red?")
    ]
    with pytest.raises(BadInput, match="2 statements, 1 questions"):
        pair_claims(statements, "- Is there a cup?", True, 9)
    with pytest.raises(BadInput, match="2 statements, 3 questions"):
        pair_claims(statements, "- a?\n- b?\n- c?", True, 9)
    assert strip_suffix("Is it red? (Answer yes or no.)") == "Is it red?"


# ---------------------------------------------------------------- LLM splitter on real tiny models


@pytest.fixture(scope="module")
def world_splitter(tokenizer, tmp_path_factory):
    """The world splitter, trained briefly (200 steps of 32, as the bootstrap does: seconds) and saved."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    path = tmp_path_factory.mktemp("splitter")
    stats = train_splitter(0, path, steps=200, batch_size=32, lr=3e-3, tokenizer=tokenizer)
    return path, stats


def random_model_folder(tokenizer, path):
    """A randomly initialised one-layer Llama with the world tokenizer and its chat template, saved as-is."""
    model = build_splitter(tokenizer, seed=1, layers=1)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def test_world_examples_are_rule_claims_in_the_format_the_splitter_parses():
    conversations = sentence_conversations("There is a red cup. I think it is nice. A small kite is on the left.")
    prompts = [c[0]["content"] for c in conversations]
    answers = [c[1]["content"] for c in conversations]
    assert prompts == [
        "Split: There is a red cup.", "Ask:\n1. There is a red cup.",
        "Split: I think it is nice.",
        "Split: A small kite is on the left.", "Ask:\n1. A small kite is on the left.",
    ]
    assert answers == [
        "1. There is a red cup.", "1. Is there a red cup?", "none",
        "1. A small kite is on the left.", "1. Is a small kite on the left?",
    ]
    with pytest.raises(BadInput, match="no claims"):
        read_statements(answers[2], True, 9)


def test_world_training_prompt_tokens_are_what_the_splitter_sends(tokenizer, tmp_path):
    conversations = splitter_examples(0, 3)
    assert len(conversations) > 12
    splitter = LLMSplitter(random_model_folder(tokenizer, tmp_path))
    for conversation in conversations[:4]:
        prompt_ids, target_ids = encode_conversation(tokenizer, conversation)
        sent = splitter.chat.tokenizer(splitter.chat.chat_text(conversation[0]["content"]), add_special_tokens=False)
        assert prompt_ids == sent["input_ids"]
        assert target_ids[-1] == tokenizer.eos_token_id


def test_llm_splitter_random_model_gives_bad_input_not_a_crash(tokenizer, tmp_path):
    path = random_model_folder(tokenizer, tmp_path)
    items = [
        ("Describe this image.", "There is a red fork on the left. A cup is blue."),
        ("Describe this image.", ""),
        ("What do you see?", "I can see a kite. " * 200),
    ]
    for unit, temperature in (("response", 0.0), ("sentence", 0.0), ("response", 0.7)):
        splitter = LLMSplitter(path, max_new_tokens=12, temperature=temperature, max_words=20, batch_size=2, unit=unit)
        out = splitter.split(items)
        assert len(out) == 3
        assert all(isinstance(r, BadInput) for r in out), out
        assert str(out[1]) == "empty response"
        reasons = ("empty response", "max_new_tokens", "unparsable", "no claims found", "count mismatch")
        assert all(any(k in str(r) for k in reasons) for r in out)
    assert str(out[0]).startswith("statement output cut at max_new_tokens=12")


def test_llm_splitter_prompts_per_unit(tokenizer, tmp_path):
    path = random_model_folder(tokenizer, tmp_path)
    item = [("Describe this image.", "There is a fork. A cup is blue. " + "A kite is red. " * 20)]
    jobs = LLMSplitter(path, max_words=10).statements_jobs(item)
    assert len(jobs) == 1 and jobs[0].sentence is None
    assert "Question: Describe this image.\nAnswer: There is a fork. A cup is blue. A kite\n" in jobs[0].prompt
    jobs = LLMSplitter(path, max_words=10, unit="sentence").statements_jobs(item)
    assert [j.sentence for j in jobs] == [0, 1, 2]
    assert "Sentence: A cup is blue.\n" in jobs[1].prompt and "Sentence: A kite\n" in jobs[2].prompt
    questions = LLMSplitter(path).questions_prompts([["There is a fork.", "The cup is blue."]])[0]
    assert questions.endswith("Statements:\n1. There is a fork.\n2. The cup is blue.")


def test_world_splitter_trains_saves_and_reloads(world_splitter):
    path, stats = world_splitter
    assert stats["steps"] == 200 and stats["examples"] == 6400
    assert math.isfinite(stats["final_loss"]) and stats["final_loss"] < stats["first_loss"] / 10
    assert (path / "model.safetensors").is_file()
    splitter = LLMSplitter(path, max_new_tokens=48)
    assert (splitter.unit, splitter.statements_prompt) == ("sentence", WORLD_STATEMENTS_PROMPT)
    assert splitter.questions_prompt == WORLD_QUESTIONS_PROMPT


def test_world_splitter_agrees_with_rules_on_held_out_responses(world_splitter):
    """The point of the world splitter: on val responses its claims are the rule claims, word for word."""
    path, _ = world_splitter
    items = world_responses(0, "val", 30)
    got = LLMSplitter(path, max_new_tokens=48, batch_size=64).split(items)
    want = RuleSplitter().split(items)
    agreement = sum(g == w for g, w in zip(got, want)) / len(items)
    assert agreement >= 0.9, [(i[1], g) for i, g, w in zip(items, got, want) if g != w][:3]
    again = LLMSplitter(path, max_new_tokens=48, batch_size=7).split(items[:5])
    assert again == got[:5]  # greedy decoding: batch size and padding do not change the claims
    assert isinstance(LLMSplitter(path).split([("Describe.", "I think it is nice.")])[0], BadInput)
