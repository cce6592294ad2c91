"""Exact hallucination metrics on the synthetic world: the scene is the ground truth, the parser reads the text.

Definitions (fractions in [0, 1]):
- chair_s: responses with at least one mention of an absent category / responses.
- chair_i: mentions of absent categories / all category mentions (every mention counts, repeats included).
- cover: distinct present categories mentioned / present objects, pooled over responses.
- attr_err: wrong attribute statements / attribute statements about present objects; an attribute statement is a
  color, size or position that a sentence gives for one present object.
- mean_len: mean words per response.
Feedback (preference pairs; e(y) = the statements of response y that the scene makes false):
- feedback_precision: pairs with e(chosen) < e(rejected) / pairs with e(chosen) != e(rejected);
- true_tie_rate: pairs with e(chosen) == e(rejected) / all pairs;
- error_precision: feedback_precision with every error counted instead of every false statement (a statement with a
  wrong color and a wrong position counts twice). Scores count rejected claims, one per statement, so they cannot
  see that a statement is wrong twice: pairs that this stricter count calls wrong are claim granularity, not
  labeler mistakes (benchmarks/feedback_errors.py tells the two apart).
Labeler: `rlaifv.world.labeler.labeler_metrics` (the bootstrap checks its labeler with them too).
"""

from __future__ import annotations

from collections.abc import Sequence

from rlaifv.world.language import attribute_checks, claim_holds, parse_mentions
from rlaifv.world.scenes import Scene


def world_errors(scene: Scene, text: str) -> int:
    """Every error of a response: absent objects plus each wrong attribute (a statement can hold several)."""
    errors = 0
    for m in parse_mentions(text):
        if m.category not in scene.categories:
            errors += 1
        else:
            errors += sum(not ok for ok in attribute_checks(scene, m))
    return errors


def false_statements(scene: Scene, text: str) -> int:
    """e(y): the statements of a response that the scene makes false -- an absent object, or a present one with a
    wrong color, size or position (however many of them are wrong)."""
    return sum(not claim_holds(scene, m) for m in parse_mentions(text))


def feedback_metrics(pairs: Sequence[tuple[Scene, str, str]]) -> dict[str, float]:
    """How right the preference pairs are, from the ground truth: (scene, chosen, rejected) per pair.

    feedback_precision = pairs with e(chosen) < e(rejected) / pairs with e(chosen) != e(rejected) (is the
    direction right?); true_tie_rate = pairs with e(chosen) == e(rejected) / all pairs (pairs that teach nothing);
    error_precision = feedback_precision with world_errors in place of e(y) (see the module note).
    """
    def precision(count) -> tuple[float, int]:
        counts = [(count(scene, c), count(scene, r)) for scene, c, r in pairs]
        decided = [(c, r) for c, r in counts if c != r]
        right = sum(c < r for c, r in decided) / len(decided) if decided else float("nan")
        return right, len(counts) - len(decided)

    statements, ties = precision(false_statements)
    return {
        "feedback_precision": statements,
        "true_tie_rate": ties / len(pairs) if pairs else float("nan"),
        "error_precision": precision(world_errors)[0],
        "n_pairs": len(pairs),
    }


def description_metrics(scenes: Sequence[Scene], responses: Sequence[str]) -> dict[str, float]:
    if len(scenes) != len(responses):
        raise ValueError(f"{len(scenes)} scenes but {len(responses)} responses")
    if not scenes:
        raise ValueError("no responses to score")
    n_hall_resp = n_mentions = n_hall = n_true = n_covered = n_attr = n_attr_wrong = n_words = 0
    for scene, text in zip(scenes, responses):
        mentions = parse_mentions(text)
        hallucinated = [m for m in mentions if m.category not in scene.categories]
        n_hall_resp += bool(hallucinated)
        n_mentions += len(mentions)
        n_hall += len(hallucinated)
        n_true += len(scene.objects)
        n_covered += len({m.category for m in mentions} & scene.categories)
        n_words += len(text.split())
        for m in mentions:
            checks = attribute_checks(scene, m)
            n_attr += len(checks)
            n_attr_wrong += sum(not ok for ok in checks)
    return {
        "chair_s": n_hall_resp / len(scenes),
        "chair_i": n_hall / n_mentions if n_mentions else 0.0,
        "cover": n_covered / n_true,
        "attr_err": n_attr_wrong / n_attr if n_attr else 0.0,
        "mean_len": n_words / len(scenes),
    }
