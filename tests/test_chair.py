"""CHAIR / Object HalBench: the word rules and the formulas, on cases worked out by hand."""

from __future__ import annotations

import json

import pytest

from rlaifv.eval.benchfiles import BadBenchmarkFile, MissingBenchmarkFile
from rlaifv.eval.chair import (
    ObjectMatcher,
    Vocabulary,
    chair_scores,
    evaluate,
    ground_truth_from_coco,
    ground_truth_from_jsonl,
    parse_object_list,
    read_synonyms,
)
from rlaifv.eval.textnorm import normalize_phrase, singularize


@pytest.fixture(scope="module")
def vocab():
    return Vocabulary.load()


@pytest.fixture(scope="module")
def matcher(vocab):
    return ObjectMatcher(vocab)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("plural,singular", [
    ("dogs", "dog"), ("puppies", "puppy"), ("people", "person"), ("children", "child"), ("men", "man"),
    ("women", "woman"), ("policemen", "policeman"), ("knives", "knife"), ("glasses", "glass"), ("buses", "bus"),
    ("benches", "bench"), ("boxes", "box"), ("ties", "tie"), ("cookies", "cookie"), ("skis", "ski"),
    ("horses", "horse"), ("shoes", "shoe"), ("tomatoes", "tomato"), ("sheep", "sheep"), ("grass", "grass"),
    ("bus", "bus"), ("scissors", "scissors"), ("tennis", "tennis"), ("mice", "mouse"), ("leaves", "leaf"),
])
def test_singularizer_handles_the_plurals_object_words_need(plural, singular):
    assert singularize(plural) == singular


def test_every_synonym_entry_is_a_fixed_point_of_normalization(vocab):
    # A vocabulary word must match itself after normalization, or a correct mention would be missed.
    for entries in read_synonyms(vocab_path()):
        for entry in entries:
            once = normalize_phrase(entry)
            assert normalize_phrase(once) == once
            assert vocab.word_to_category[once] == entries[0]


def vocab_path():
    from rlaifv.eval.chair import default_synonyms_path

    return default_synonyms_path()


def test_shipped_synonyms_carry_provenance_and_80_categories(vocab):
    text = vocab_path().read_text()
    assert "Rohrbach" in text and "BSD 2-Clause" in text
    assert len(vocab.categories) == 80 and vocab.categories[0] == "person" and vocab.categories[-1] == "toothbrush"


def test_response_without_object_mentions_nothing(matcher):
    assert matcher.mentions("A sunny sky over green hills, quiet and calm.") == []


def test_repeated_mentions_all_count(matcher):
    # dog, dog, puppy: three mentions of one category, in order
    assert matcher.mentions("A dog chases another dog; the puppy barks.") == [
        ("dog", "dog"), ("dog", "dog"), ("puppy", "dog")]


def test_two_word_phrases_are_one_mention(matcher):
    # "hot dog" is food, not a dog; "teddy bears" is one toy, not a bear
    assert matcher.mentions("Two hot dogs and teddy bears on a dining table.") == [
        ("hot dog", "hot dog"), ("teddy bear", "teddy bear"), ("dining table", "dining table")]


def test_baby_and_adult_before_an_animal_name_the_animal(matcher):
    # "baby elephant" -> elephant (no person); a lone "baby" is a person; "passenger train" -> train
    assert matcher.mentions("A baby elephant, an adult giraffe, a baby and a passenger train.") == [
        ("elephant", "elephant"), ("giraffe", "giraffe"), ("baby", "person"), ("train", "train")]


def test_toilet_seat_is_a_toilet_and_never_a_chair(matcher):
    assert matcher.mentions("The toilet seat is up.") == [("toilet", "toilet")]
    # "seat" elsewhere in a response that names a toilet is dropped too
    assert matcher.mentions("A toilet with its seat raised.") == [("toilet", "toilet")]
    # without a toilet, a seat is a chair
    assert matcher.mentions("A seat by the window.") == [("seat", "chair")]


def test_non_object_phrases_are_absorbed(matcher):
    # "train track" names no train; "home plate" no plate (plate is no category anyway)
    assert matcher.mentions("Rust on the train track near home plate.") == []


def test_llm_object_list_maps_each_object_once(matcher):
    # dogs -> dog (same word as "dog": kept once), puppy -> dog, "red car" -> car, "wooden table" -> dining table,
    # "sky" names no category
    assert matcher.mentions_of_objects(["dog", "dogs", "puppy", "red car", "wooden table", "sky"]) == [
        ("dog", "dog"), ("puppy", "dog"), ("car", "car"), ("table", "dining table")]


@pytest.mark.parametrize("answer,expected", [
    ('["dog", "frisbee"]', ["dog", "frisbee"]),
    ('Here you go:\n```json\n["cat"]\n```', ["cat"]),
    ('The objects are:\n["cup", "table"]', ["cup", "table"]),
    ("[]", []),
    ("dog, frisbee", None),
    ('{"objects": ["dog"]}', ["dog"]),  # the list inside is taken
    ('["dog", 3]', None),
])
def test_object_list_parser(answer, expected):
    assert parse_object_list(answer) == expected


@pytest.fixture()
def four_responses(tmp_path, vocab, matcher):
    gt = ground_truth_from_jsonl(_jsonl(tmp_path / "g.jsonl", [
        {"image_id": 1, "instances": ["dog", "person"], "captions": ["A man walks his dog in the park."]},
        {"image_id": 2, "instances": ["dining table"], "captions": ["A table with a pizza and two cups."]},
        {"image_id": 3, "instances": ["car"], "captions": []},
    ]), vocab, matcher)
    rows = [
        {"image_id": 1, "response": "A man and his dog play with a frisbee. The dog catches the frisbee."},
        {"image_id": 2, "response": "A pizza on a table next to a cup."},
        {"image_id": 3, "response": "A quiet street at night."},
        {"image_id": "1", "response": "A woman sits on a bench."},
    ]
    return rows, gt


def test_ground_truth_is_instances_plus_caption_objects(four_responses):
    _, gt = four_responses
    assert gt == {"1": {"dog", "person"}, "2": {"dining table", "pizza", "cup"}, "3": {"car"}}


def test_chair_formulas_by_hand(four_responses, matcher):
    rows, gt = four_responses
    result = chair_scores(rows, [matcher.mentions(r["response"]) for r in rows], gt)
    # mentions: r1 man, dog, frisbee, dog, frisbee (frisbee x2 hallucinated); r2 pizza, table, cup (none);
    # r3 nothing; r4 woman, bench (bench hallucinated)
    assert result["per_response"][0]["mentions"] == [["man", "person"], ["dog", "dog"], ["frisbee", "frisbee"],
                                                     ["dog", "dog"], ["frisbee", "frisbee"]]
    assert result["per_response"][0]["hallucinated"] == [["frisbee", "frisbee"], ["frisbee", "frisbee"]]
    assert result["per_response"][2] == {"image_id": 3, "mentions": [], "hallucinated": []}
    assert result["chair_s"] == 2 / 4  # r1 and r4 hallucinate, of 4 responses
    assert result["chair_s_refine"] == 2 / 3  # of the 3 responses that mention any object
    assert result["chair_i"] == 3 / 10  # 2 + 1 hallucinated of 5 + 3 + 0 + 2 mentions
    # distinct correct categories / ground-truth size, summed: (2 + 3 + 0 + 1) / (2 + 3 + 1 + 2)
    assert result["recall"] == 6 / 8
    assert (result["n_responses"], result["n_mentions"], result["n_hallucinated"]) == (4, 10, 3)


def test_instance_names_go_through_the_synonyms(tmp_path, vocab, matcher):
    gt = ground_truth_from_jsonl(_jsonl(tmp_path / "g.jsonl", [
        {"image_id": 7, "instances": ["sports ball", "Teddy Bear"], "captions": []}]), vocab, matcher)
    rows = [{"image_id": 7, "response": "A ball next to a teddy bear."}]
    result = chair_scores(rows, [matcher.mentions(rows[0]["response"])], gt)
    assert result["chair_i"] == 0.0 and result["recall"] == 1.0


def test_unknown_instance_name_is_an_error_naming_it(tmp_path, vocab, matcher):
    with pytest.raises(BadBenchmarkFile, match="'unicorn'"):
        ground_truth_from_jsonl(_jsonl(tmp_path / "g.jsonl", [{"image_id": 1, "instances": ["unicorn"]}]),
                                vocab, matcher)


def test_response_without_ground_truth_is_an_error(four_responses, matcher):
    rows, gt = four_responses
    with pytest.raises(BadBenchmarkFile, match="image_id 99"):
        chair_scores([{"image_id": 99, "response": "x"}], [[]], gt)


def test_coco_annotations_give_the_same_ground_truth(tmp_path, vocab, matcher):
    cats = [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
    (tmp_path / "instances_val2014.json").write_text(json.dumps({"categories": cats, "annotations": [
        {"image_id": 1, "category_id": 18}, {"image_id": 1, "category_id": 1}, {"image_id": 5, "category_id": 3}]}))
    (tmp_path / "instances_train2014.json").write_text(json.dumps({"categories": cats, "annotations": [
        {"image_id": 3, "category_id": 3}]}))
    (tmp_path / "captions_val2014.json").write_text(json.dumps({"annotations": [
        {"image_id": 1, "caption": "A man walks his dog with a frisbee."}]}))
    (tmp_path / "captions_train2014.json").write_text(json.dumps({"annotations": []}))
    gt = ground_truth_from_coco(tmp_path, {"1", "3"}, vocab, matcher)
    assert gt == {"1": {"dog", "person", "frisbee"}, "3": {"car"}}  # image 5 was not asked for


def test_missing_coco_file_names_the_file(tmp_path, vocab, matcher):
    (tmp_path / "instances_train2014.json").write_text("{}")
    with pytest.raises(MissingBenchmarkFile) as err:
        ground_truth_from_coco(tmp_path, {"1"}, vocab, matcher)
    assert str(tmp_path / "instances_val2014.json") in str(err.value)


def test_evaluate_end_to_end_from_files(tmp_path):
    g = _jsonl(tmp_path / "g.jsonl", [{"image_id": 1, "instances": ["cat"], "captions": []}])
    r = _jsonl(tmp_path / "r.jsonl", [{"image_id": 1, "response": "Two cats and a dog."}])
    result = evaluate(r, ground_truth=g)
    # mentions: cat (one word, whatever the count), dog (hallucinated) -> CHAIRi 1/2
    assert result["extract"] == "rules" and result["chair_i"] == 1 / 2 and result["chair_s"] == 1.0
    with pytest.raises(MissingBenchmarkFile, match="nothing.jsonl"):
        evaluate(tmp_path / "nothing.jsonl", ground_truth=g)
