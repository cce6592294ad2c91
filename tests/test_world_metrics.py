"""World metrics on hand-made cases, with the expected values worked out by hand."""

from __future__ import annotations

import math

import pytest

from rlaifv.eval.world_metrics import description_metrics
from rlaifv.world.labeler import labeler_metrics
from rlaifv.world.language import YesNoQuestion
from rlaifv.world.scenes import Scene, WorldObject

FORK = WorldObject("fork", "red", "small", 0)
CUP = WorldObject("cup", "blue", "large", 4)
SCENE = Scene("s", "test", (FORK, CUP), ((0, 0), (0, 0)))
TREE = Scene("t", "test", (WorldObject("tree", "green", "large", 8),), ((0, 0),))


def test_description_metrics_by_hand():
    responses = [
        # both objects, one wrong color (blue fork), one hallucinated knife mentioned twice
        "There is a small blue fork in the top left corner. A cup is in the center. I see a knife. The knife is red.",
        # the tree, correctly, nothing else
        "There is a large green tree in the bottom right corner.",
    ]
    m = description_metrics([SCENE, TREE], responses)
    assert m["chair_s"] == pytest.approx(1 / 2)  # one of two responses hallucinates
    assert m["chair_i"] == pytest.approx(2 / 5)  # 5 mentions, 2 of them of the absent knife
    assert m["cover"] == pytest.approx(3 / 3)  # fork, cup, tree all mentioned
    # statements about present objects: fork size ok, color wrong, position ok; cup position ok;
    # tree size, color, position ok -> 1 wrong of 7
    assert m["attr_err"] == pytest.approx(1 / 7)
    assert m["mean_len"] == pytest.approx((len(responses[0].split()) + len(responses[1].split())) / 2)


def test_description_metrics_omissions_and_empty_response():
    m = description_metrics([SCENE, TREE], ["There is a fork.", ""])
    assert m["chair_s"] == 0 and m["chair_i"] == 0
    assert m["cover"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        description_metrics([SCENE], [])


def test_labeler_metrics_by_hand():
    qs = [
        YesNoQuestion("Is there a fork?", True, "existence", False),
        YesNoQuestion("Is the fork red?", True, "color", False),
        YesNoQuestion("Is there a knife?", False, "existence", True),
        YesNoQuestion("Is there a car?", False, "existence", False),
    ]
    # yes (right), tie -> no (a false rejection), yes (wrong, hard), no (right)
    probs = [(0.9, 0.1), (0.5, 0.5), (0.6, 0.4), (0.2, 0.8)]
    m = labeler_metrics(qs, probs)
    assert m["accuracy"] == pytest.approx(2 / 4)
    assert m["hard_negative_accuracy"] == pytest.approx(0.0)
    assert m["false_rejection_rate"] == pytest.approx(1 / 2)
    assert math.isnan(labeler_metrics(qs[:2], probs[:2])["hard_negative_accuracy"])


def test_world_errors_and_feedback_metrics_on_hand_made_pairs():
    from rlaifv.eval.world_metrics import false_statements, feedback_metrics, world_errors
    from rlaifv.world.scenes import Scene, WorldObject

    scene = Scene("s", "test", (WorldObject("fork", "red", "small", 0),), ((0, 0),))
    clean = "There is a small red fork in the top left corner."
    wrong_color = "There is a blue fork."
    absent = "There is a red fork. There is a knife."
    assert world_errors(scene, clean) == 0
    assert world_errors(scene, wrong_color) == 1
    assert world_errors(scene, absent) == 1
    assert world_errors(scene, "There is a blue fork. There is a knife.") == 2
    m = feedback_metrics([(scene, clean, absent), (scene, absent, clean), (scene, wrong_color, absent)])
    assert m["feedback_precision"] == m["error_precision"] == 0.5  # one right, one wrong, one tie
    assert abs(m["true_tie_rate"] - 1 / 3) < 1e-12
    assert m["n_pairs"] == 3
    # e(y) counts false statements; errors count each wrong attribute of them
    twice_wrong = "There is a large blue fork in the bottom right corner."  # color, size and position wrong
    assert (false_statements(scene, twice_wrong), world_errors(scene, twice_wrong)) == (1, 3)
    assert false_statements(scene, "There is a blue fork. There is a knife.") == 2
    two_statements = "There is a blue fork. There is a cup."  # two false statements, two errors
    m = feedback_metrics([(scene, twice_wrong, two_statements)])  # the chosen one has fewer false statements
    assert (m["feedback_precision"], m["error_precision"], m["true_tie_rate"]) == (1.0, 0.0, 0.0)
