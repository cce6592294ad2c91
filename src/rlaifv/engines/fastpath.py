"""A fast path is used on a model only after it agreed with the plain forward on that run's own items.

Packing, a shared prefill and image features computed once are each exact only if the rows they build give the
model what its own forward would derive (engines.family). A family whose positions, masks or processor outputs that
module does not know would get silently wrong numbers. So the first time a run uses a fast path on a model, the
caller computes a few of its real items both ways (`trusted`); if the two differ by more than the tolerance of the
model's dtype -- or the fast path raises -- the caller uses the plain path on that model for the rest of the run,
the log says so, and `report` puts the verdict in the stage's summary.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from rlaifv.progress import log

# Largest difference allowed between the fast and the plain computation, by the dtype the model computes in:
# probabilities (P(yes), P(no)) and log-probs per response token. fp32 round-off is ~1e-6; bf16's is ~1e-2; a wrong
# position or mask moves probabilities by ~0.1-1 and log-probs by ~0.1-1 nat per token.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-6}
HALF_TOLERANCE = 5e-2


def tolerance(dtype: torch.dtype) -> float:
    """The allowed fast-vs-plain difference for a model computing in `dtype`."""
    return TOLERANCE.get(dtype, HALF_TOLERANCE)


@dataclass(frozen=True)
class Verdict:
    """Whether one fast path may run on one model, and what its check measured."""

    fast: bool
    max_diff: float  # largest |fast - plain| over the checked values (inf when the fast path raised)
    tolerance: float
    checked: int  # values compared
    reason: str = ""  # why the fast path is off, if it is


_VERDICTS: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, Verdict]] = weakref.WeakKeyDictionary()


def _values(x: torch.Tensor | Sequence) -> list[float]:
    if isinstance(x, torch.Tensor):
        return [float(v) for v in x.detach().float().flatten().cpu()]
    flat: list[float] = []
    for item in x:
        flat += _values(item) if isinstance(item, torch.Tensor | list | tuple) else [float(item)]
    return flat


def _gap(fast: float, plain: float) -> float:
    """|fast - plain|; 0 where both paths give the same non-number (both NaN, or the same infinity), since that
    is the item's fault, not the path's -- one poisoned input must not send a whole run down the slow path --
    and inf where only one of them does."""
    if fast == plain or (math.isnan(fast) and math.isnan(plain)):
        return 0.0
    gap = abs(fast - plain)
    return gap if math.isfinite(gap) else math.inf


def trusted(model: torch.nn.Module, path: str, fast: Callable[[], object], plain: Callable[[], object],
            dtype: torch.dtype | None = None) -> bool:
    """Whether `path` (e.g. "judge.packed") may run on `model`: decided once per model, the first time it is
    asked, by comparing `fast()` with `plain()` -- the same few items computed both ways, as tensors or nested
    sequences of numbers in the same order. Both run under no_grad with the model in eval mode (no dropout)."""
    verdicts = _VERDICTS.setdefault(model, {})
    if path in verdicts:
        return verdicts[path].fast
    tol = tolerance(dtype or next(model.parameters()).dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            want = _values(plain())
            try:
                got = _values(fast())
            except Exception as exc:  # noqa: BLE001 -- any failure of the fast path means: use the plain one
                verdict = Verdict(False, math.inf, tol, len(want), f"the fast path failed: {exc!r}"[:300])
            else:
                if len(got) != len(want):
                    verdict = Verdict(False, math.inf, tol, len(want), "the fast path returned another count")
                else:
                    diff = max(map(_gap, got, want), default=0.0)
                    ok = diff <= tol
                    verdict = Verdict(ok, diff, tol, len(want), "" if ok else f"differs from the plain forward by "
                                      f"{diff:.3g} > {tol:g}")
    finally:
        model.train(was_training)
    verdicts[path] = verdict
    name = type(model).__name__
    if verdict.fast:
        log(f"{path}: fast path checked on {name} ({verdict.checked} values, max difference {verdict.max_diff:.2g})")
    else:
        log(f"{path}: {verdict.reason} on {name}; using the exact (unpacked) path for this model")
    return verdict.fast


def report(model: torch.nn.Module) -> dict[str, dict]:
    """Every fast-path verdict taken on `model` so far, for a stage summary."""
    return {path: asdict(v) for path, v in _VERDICTS.get(model, {}).items()}

