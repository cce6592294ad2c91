"""Which checkpoint of a round becomes the next round's policy: what `rlaifv iterate --select-on` measures.

A selector measures one checkpoint (`measure`, written to disk by the loop so a rerun does not measure it again)
and orders measurements (`order`: smaller is better). `choose` takes the best, and the earlier step on a tie, since
the earlier checkpoint has drifted less from the reference for the same result.

- `world`: greedy descriptions of the world's `val` scenes (never the `test` scenes the report uses), scored by
  `world_objective`: CHAIRs, plus `penalty` x how far Cover fell below the starting policy's Cover minus
  `tolerance`. Lower CHAIRs wins as long as the checkpoint still names the real objects; a checkpoint that cuts
  hallucinations by saying less loses.
- `reward`: accuracy of the checkpoint's implicit reward beta * log(pi / pi_ref) on pairs held out of training
  (infer.reward), ties broken by the larger mean margin. It needs no ground truth, so it works on a user's data.

Adding a selector (e.g. `benchmark`: CHAIR of `rlaifv eval generate` responses on Object HalBench, not wired yet)
means one class with `name`, `measure` and `order`, and one branch in the loop's `_selector`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from rlaifv.config import DPOConfig, EvalConfig
from rlaifv.logps.reference import ReferenceTable
from rlaifv.preferences import PreferenceExample
from rlaifv.world.config import WorldConfig


class Selector(Protocol):
    name: str

    def measure(self, checkpoint: Path, folder: Path) -> dict[str, Any]:
        """Metrics of one checkpoint (model folder); `folder` is the checkpoint's own folder for anything kept."""

    def order(self, metrics: dict[str, Any]) -> tuple[float, ...]:
        """Sort key of a measurement: smaller is better."""


def world_objective(metrics: dict[str, float], base_cover: float, tolerance: float, penalty: float) -> float:
    """CHAIRs + penalty * max(0, (base_cover - tolerance) - Cover): lower is better."""
    return metrics["chair_s"] + penalty * max(0.0, (base_cover - tolerance) - metrics["cover"])


class WorldSelector:
    """World metrics on the `val` split (`ecfg.split` must be 'val')."""

    name = "world"

    def __init__(self, world: WorldConfig, ecfg: EvalConfig, base_cover: float, tolerance: float, penalty: float,
                 device: str = "cpu") -> None:
        if ecfg.split != "val":
            raise ValueError(f"checkpoints are selected on the 'val' split, not {ecfg.split!r}")
        self.world, self.ecfg, self.device = world, ecfg, device
        self.base_cover, self.tolerance, self.penalty = base_cover, tolerance, penalty

    def measure(self, checkpoint: Path, folder: Path) -> dict[str, Any]:
        from rlaifv.eval.world import evaluate_policy

        metrics = evaluate_policy(checkpoint, self.world, self.ecfg, folder, self.device)
        return {**metrics, "objective": self.objective(metrics)}

    def objective(self, metrics: dict[str, float]) -> float:
        return world_objective(metrics, self.base_cover, self.tolerance, self.penalty)

    def order(self, metrics: dict[str, Any]) -> tuple[float, ...]:
        return (metrics["objective"],)


class RewardSelector:
    """Implicit-reward accuracy on held-out pairs, with the reference log-probs of the round's reference pass."""

    name = "reward"

    def __init__(self, heldout: list[PreferenceExample], reference: ReferenceTable, cfg: DPOConfig,
                 device: str = "cpu") -> None:
        self.heldout, self.reference, self.cfg, self.device = heldout, reference, cfg, device

    def measure(self, checkpoint: Path, folder: Path) -> dict[str, Any]:
        from rlaifv.infer.reward import reward_accuracy

        return reward_accuracy(checkpoint, self.heldout, self.reference, self.cfg, self.device)

    def order(self, metrics: dict[str, Any]) -> tuple[float, ...]:
        return (-metrics["accuracy"], -metrics["margin"])


def choose(candidates: list[dict[str, Any]], selector: Selector) -> dict[str, Any]:
    """The best candidate ({"step", "metrics", ...} each): smallest `selector.order`, then the earliest step."""
    if not candidates:
        raise ValueError("no checkpoint to choose from")
    return min(candidates, key=lambda c: (*selector.order(c["metrics"]), c["step"]))
