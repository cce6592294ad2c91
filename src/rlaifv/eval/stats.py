"""Interval estimates and rater agreement for benchmark scores: Wilson intervals for a rate, a seeded percentile
bootstrap for a mean, Cohen's and Fleiss' kappa for yes/no labels. Standard library only, so results do not move
with what happens to be installed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

Z95 = 1.959963984540054  # two-sided 95 % normal quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> list[float] | None:
    """Wilson score interval [lo, hi] of a binomial proportion successes / n; None when n == 0.

    Unlike p ± z·sqrt(p(1-p)/n) it stays inside [0, 1] and is not empty at p = 0 or 1, which matters for the small
    samples of a human evaluation.
    """
    if n == 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [max(0.0, center - half), min(1.0, center + half)]


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile of sorted values, linear between neighbours (numpy's default rule)."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def bootstrap_interval(values: Sequence[float], seed: int = 0, resamples: int = 1000,
                       level: float = 0.95) -> list[float] | None:
    """Percentile bootstrap interval [lo, hi] of the mean of `values` (resampled with replacement, `resamples`
    times, from random.Random(seed)); None for no values. The same values and seed give the same interval."""
    if not values:
        return None
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    return [quantile(means, tail), quantile(means, 1 - tail)]


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float | None:
    """Cohen's kappa of two raters' yes/no labels on the same items: (p_o - p_e) / (1 - p_e). None when chance
    agreement is 1 (both raters gave one and the same label to everything), where kappa is undefined."""
    if len(a) != len(b) or not a:
        raise ValueError("Cohen's kappa needs two equally long, non-empty label lists")
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b)) / n
    ya, yb = sum(a) / n, sum(b) / n
    chance = ya * yb + (1 - ya) * (1 - yb)
    return None if chance == 1 else (observed - chance) / (1 - chance)


def fleiss_kappa(labels: Sequence[Sequence[bool]]) -> float | None:
    """Fleiss' kappa of m >= 2 raters' yes/no labels: labels[i] holds item i's m labels. None when chance
    agreement is 1 (every label the same)."""
    if not labels:
        raise ValueError("Fleiss' kappa needs at least one item")
    m = len(labels[0])
    if m < 2 or any(len(row) != m for row in labels):
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of labels for every item")
    n = len(labels)
    agreement = []
    yes_total = 0
    for row in labels:
        yes = sum(row)
        yes_total += yes
        agreement.append((yes * yes + (m - yes) ** 2 - m) / (m * (m - 1)))
    p_yes = yes_total / (n * m)
    chance = p_yes**2 + (1 - p_yes) ** 2
    mean_agreement = sum(agreement) / n
    return None if chance == 1 else (mean_agreement - chance) / (1 - chance)
