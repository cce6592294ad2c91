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

- `chair` / `amber`: the checkpoint answers a held-out benchmark file the user gives (`select_benchmark`; never
  the file the report uses) as `rlaifv eval generate` would, and is scored as `rlaifv eval chair | amber` score:
  lowest Object HalBench response-level rate (CHAIRs refine, then CHAIRi) or highest AMBER score (discriminative
  F1 when only yes/no queries are answered, lowest generative CHAIR when only descriptions are).

Adding a selector means one class with `name`, `measure` and `order`, and one branch in the loop's `_selector`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from rlaifv.config import BenchmarkSelectConfig, DPOConfig, EvalConfig
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

    @staticmethod
    def _lower_than_start(candidates: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The start's (step 0) `val` metrics, and the checkpoints with lower `val` CHAIRs than it."""
        start = next(c["metrics"] for c in candidates if c["step"] == 0)
        return start, [c for c in candidates if c["step"] > 0 and c["metrics"]["chair_s"] < start["chair_s"]]

    def cover_bound(self, candidates: list[dict[str, Any]], best: dict[str, Any]) -> bool:
        """The round kept its start although checkpoints had lower `val` CHAIRs: each of them lost on Cover."""
        return best["step"] == 0 and bool(self._lower_than_start(candidates)[1])

    def why_start_kept(self, candidates: list[dict[str, Any]]) -> str:
        """Why no checkpoint beat the round's start (the step-0 candidate): none lowered `val` CHAIRs, or every one
        that did fell below the Cover the selection allows -- a Cover-bound round, whose policy can cut
        hallucinations here only by naming fewer real objects (`cover_tolerance` is the knob that trades them)."""
        start, lower = self._lower_than_start(candidates)
        if not lower:
            return f"no checkpoint had lower `val` CHAIRs than its start ({start['chair_s']:.3f})"
        best = min(lower, key=lambda c: (c["metrics"]["chair_s"], c["step"]))
        floor = self.base_cover - self.tolerance
        return (f"Cover-bound: the {len(lower)} checkpoint{'s' if len(lower) > 1 else ''} with lower `val` CHAIRs "
                f"(down to {best['metrics']['chair_s']:.3f} at step {best['step']}) named fewer real objects: Cover "
                f"at most {max(c['metrics']['cover'] for c in lower):.3f}, below the {floor:.3f} allowed "
                f"(cover_tolerance {self.tolerance:g} below the base policy's {self.base_cover:.3f})")


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


class BenchmarkSelector:
    """Object HalBench (CHAIR, word rules) or AMBER on a held-out benchmark file; answers kept in the checkpoint's
    folder (responses.jsonl, resumable)."""

    def __init__(self, benchmark: str, cfg: BenchmarkSelectConfig, device: str = "cpu") -> None:
        if benchmark not in ("chair", "amber"):
            raise ValueError(f"benchmark selection is on chair or amber, not {benchmark!r}")
        if not cfg.data or (benchmark == "chair" and not cfg.truth):
            raise ValueError(f"select_on {benchmark} needs select_benchmark.data"
                             + (" and select_benchmark.truth" if benchmark == "chair" else ""))
        self.name, self.cfg, self.device = benchmark, cfg, device

    def items(self) -> list[Any]:
        """The benchmark's prompts (also a check, before any training, that its files are there)."""
        from rlaifv.eval.bench_generate import benchmark_items

        images = Path(self.cfg.images) if self.cfg.images else None
        return benchmark_items("objhal" if self.name == "chair" else "amber", Path(self.cfg.data), images,
                               self.cfg.amber_split)

    def measure(self, checkpoint: Path, folder: Path, engine: Any = None) -> dict[str, Any]:
        from rlaifv.eval.bench_generate import BenchGenerateConfig, generate

        gen = BenchGenerateConfig(policy={"path": str(checkpoint), "device": self.device},
                                  num_beams=self.cfg.num_beams, max_new_tokens=self.cfg.max_new_tokens,
                                  batch_size=self.cfg.batch_size)
        responses = folder / "responses.jsonl"
        generate(self.items(), responses, "id", gen, engine=engine)
        if self.name == "chair":
            from rlaifv.eval.chair import evaluate

            truth = Path(self.cfg.truth)
            result = evaluate(responses, **({"coco": truth} if truth.is_dir() else {"ground_truth": truth}))
            return {k: result[k] for k in ("chair_s_refine", "chair_s", "chair_i", "recall", "n_responses")}
        from rlaifv.eval.amber import AmberData, amber_scores, read_responses

        data = AmberData.load(Path(self.cfg.data))
        result = amber_scores(read_responses(responses, data), data)
        overall = result.get("discriminative", {}).get("overall", {})
        return {"amber_score": result.get("amber_score"), "accuracy": overall.get("accuracy"),
                "f1": overall.get("f1"), **{k: v for k, v in result.get("generative", {}).items()}}

    def order(self, metrics: dict[str, Any]) -> tuple[float, ...]:
        def low(*keys: str) -> float:  # the first value present; an undefined rate sorts last
            return next((float(metrics[k]) for k in keys if metrics.get(k) is not None), float("inf"))

        if self.name == "chair":
            return (low("chair_s_refine", "chair_s"), low("chair_i"))
        if metrics.get("amber_score") is not None:
            return (-metrics["amber_score"],)
        if metrics.get("f1") is not None:
            return (-metrics["f1"], -metrics["accuracy"])
        return (low("chair"),)


def choose(candidates: list[dict[str, Any]], selector: Selector) -> dict[str, Any]:
    """The best candidate ({"step", "metrics", ...} each): smallest `selector.order`, then the earliest step."""
    if not candidates:
        raise ValueError("no checkpoint to choose from")
    return min(candidates, key=lambda c: (*selector.order(c["metrics"]), c["step"]))
