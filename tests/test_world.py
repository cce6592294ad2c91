"""The synthetic world: determinism, disjoint splits, ground truth against pixels, language round trips."""

from __future__ import annotations

import re

import numpy as np
import pytest

from rlaifv.world.language import (
    QUESTION_KINDS,
    CaptionNoise,
    Mention,
    describe,
    noisy_caption,
    parse_mentions,
    sample_questions,
    true_mentions,
)
from rlaifv.world.render import BACKGROUND, CELL, render
from rlaifv.world.scenes import CATEGORIES, COLORS, PARTNER, SPLITS, Scene, WorldObject, sample_scenes


def test_scenes_and_images_are_deterministic_per_seed():
    a, b = sample_scenes(7, "train", 50), sample_scenes(7, "train", 50)
    assert a == b
    assert [render(s).tobytes() for s in a[:10]] == [render(s).tobytes() for s in b[:10]]
    assert sample_scenes(8, "train", 50) != a
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    assert [noisy_caption(s, rng_a) for s in a] == [noisy_caption(s, rng_b) for s in b]


def test_prefix_of_a_split_does_not_depend_on_its_size():
    assert sample_scenes(3, "test", 20) == sample_scenes(3, "test", 60)[:20]


def test_splits_never_share_a_scene():
    sigs = {split: {s.signature() for s in sample_scenes(0, split, 600)} for split in SPLITS}
    for i, x in enumerate(SPLITS):
        for y in SPLITS[i + 1 :]:
            assert not sigs[x] & sigs[y], (x, y)


def test_scene_shape_and_prior():
    scenes = sample_scenes(0, "train", 2000)
    counts = [len(s.objects) for s in scenes]
    assert min(counts) == 1 and max(counts) == 5
    assert all(len(s.categories) == len(s.objects) for s in scenes)  # categories are unique per scene
    assert {o.category for s in scenes for o in s.objects} == set(CATEGORIES)
    with_partner = [PARTNER[o.category] in s.categories for s in scenes for o in s.objects if o.category in PARTNER]
    assert 0.6 < np.mean(with_partner) < 0.9  # co-occurrence prior: partners usually appear together


def test_ground_truth_agrees_with_pixels():
    for scene in sample_scenes(1, "test", 100):
        pixels = np.asarray(render(scene))
        occupied = {o.cell: o for o in scene.objects}
        for cell in range(9):
            r, c = divmod(cell, 3)
            patch = pixels[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL].reshape(-1, 3)
            not_bg = np.any(patch != BACKGROUND, axis=1)
            if cell not in occupied:
                assert not not_bg.any(), f"{scene.scene_id}: cell {cell} should be empty"
                continue
            obj = occupied[cell]
            # every drawn pixel in the cell has exactly the object's color
            assert (patch[not_bg] == COLORS[obj.color]).all()
            # and the object is clearly there, bigger when large
            share = not_bg.mean()
            assert share > (0.04 if obj.size == "small" else 0.12), (scene.scene_id, obj, share)


def test_large_objects_cover_more_pixels_than_small_ones():
    for cat in CATEGORIES:
        areas = {}
        for size in ("small", "large"):
            s = Scene("x", "train", (WorldObject(cat, "red", size, 4),), ((0, 0),))
            areas[size] = np.any(np.asarray(render(s)) != BACKGROUND, axis=2).sum()
        assert areas["large"] > 1.8 * areas["small"], (cat, areas)


def test_categories_look_different():
    shapes = []
    for cat in CATEGORIES:
        s = Scene("x", "train", (WorldObject(cat, "white", "large", 4),), ((0, 0),))
        shapes.append(np.any(np.asarray(render(s)) != BACKGROUND, axis=2))
    for i in range(len(shapes)):
        for j in range(i + 1, len(shapes)):
            assert (shapes[i] != shapes[j]).sum() > 40, (CATEGORIES[i], CATEGORIES[j])


def test_parser_reads_back_every_true_description():
    rng = np.random.default_rng(0)
    for scene in sample_scenes(2, "val", 300):
        truth = true_mentions(scene)
        assert parse_mentions(describe(truth, rng)) == truth


def test_parser_on_hand_written_text():
    text = "In the top left corner, there is a big green tree. I can see a fork. A knife and a cup are here."
    assert parse_mentions(text) == [
        Mention("tree", "green", "large", 0),
        Mention("fork"),
        Mention("knife"),
        Mention("cup"),
    ]
    assert parse_mentions("") == []


def test_noisy_captions_add_absent_partners_at_the_configured_rate():
    rng = np.random.default_rng(0)
    noise = CaptionNoise(typical_color_prob=0.0, omission_prob=0.0, partner_hallucination_prob=0.7)
    added = opportunities = 0
    for scene in sample_scenes(0, "train", 3000):
        absent_partners = {PARTNER[c] for c in scene.categories if c in PARTNER} - scene.categories
        if len(absent_partners) != 1:
            continue
        opportunities += 1
        said = {m.category for m in parse_mentions(noisy_caption(scene, rng, noise))}
        assert scene.categories <= said  # nothing omitted at omission_prob 0
        added += bool(said & absent_partners)
    assert opportunities > 200
    assert abs(added / opportunities - noise.partner_hallucination_prob) < 0.08


@pytest.mark.parametrize("seed", [0, 1])
def test_questions_are_balanced_and_answers_exact(seed):
    rng = np.random.default_rng(seed)
    qs = [(s, q) for s in sample_scenes(seed, "test", 200) for q in sample_questions(s, rng, 6)]
    answers = [q.answer for _, q in qs]
    assert sum(answers) == len(answers) // 2
    assert {q.kind for _, q in qs} == set(QUESTION_KINDS)
    for scene, q in qs:
        # the text says exactly what the question's claim says, and the scene decides the answer
        assert parse_mentions(q.question) == [q.claim]
        obj = scene.object_of(q.claim.category)
        truth = obj is not None and all(
            said is None or said == real
            for said, real in ((q.claim.color, obj.color), (q.claim.size, obj.size), (q.claim.cell, obj.cell))
        )
        assert q.answer == truth
        if q.kind in ("color", "size", "position"):
            assert obj is not None  # attribute questions are asked of present objects
    assert any(q.hard for _, q in qs) and all(not q.answer for _, q in qs if q.hard)


@pytest.mark.parametrize("form", ["also", "varied"])
def test_an_added_partner_and_only_it_opens_with_also_when_configured(form):
    rng = np.random.default_rng(0)
    noise = CaptionNoise(partner_form=form)
    added = 0
    for scene in sample_scenes(0, "train", 300):
        for sent in re.findall(r"[^.]+\.", noisy_caption(scene, rng, noise)):
            is_added = parse_mentions(sent)[0].category not in scene.categories
            assert sent.strip().startswith("Also, there is ") == (is_added and form == "also"), sent
            added += is_added
    assert added > 50


@pytest.mark.parametrize("placement", ["end", "after_source"])
def test_an_added_partner_goes_where_the_noise_config_says(placement):
    rng = np.random.default_rng(0)
    noise = CaptionNoise(typical_color_prob=0.0, omission_prob=0.0, partner_hallucination_prob=1.0,
                         partner_placement=placement)
    checked = 0
    for scene in sample_scenes(0, "train", 400):
        said = [m.category for m in parse_mentions(noisy_caption(scene, rng, noise))]
        real = [o.category for o in scene.objects]
        added = [i for i, c in enumerate(said) if c not in scene.categories]
        if len(added) != 1 or len(set(real)) != len(real):
            continue
        i = added[0]
        if placement == "end":
            assert i == len(said) - 1
        else:
            assert said[i - 1] == PARTNER[said[i]]  # right after the object that suggested it
        checked += i < len(said) - 1
    assert checked > 20 if placement == "after_source" else checked == 0
