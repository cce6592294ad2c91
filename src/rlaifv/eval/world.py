"""`rlaifv eval world`: greedy descriptions and labeler verdicts on held-out scenes, scored exactly.

Generations go to a sharded store when an output folder is given, so an interrupted evaluation resumes where it
stopped; the metrics are computed from the store.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from rlaifv.config import EvalConfig
from rlaifv.engines.base import Sampling
from rlaifv.engines.hf import HFEngine
from rlaifv.eval.world_metrics import description_metrics
from rlaifv.progress import progress
from rlaifv.records import Generation
from rlaifv.store import ShardedStore
from rlaifv.world.config import WorldConfig
from rlaifv.world.labeler import labeler_quality
from rlaifv.world.language import instruction_for
from rlaifv.world.render import render
from rlaifv.world.scenes import Scene, sample_scenes


def describe_scenes(engine: HFEngine, scenes: list[Scene], ecfg: EvalConfig, store: ShardedStore | None) -> list[str]:
    """Greedy descriptions of the scenes, resuming from (and writing to) the store when one is given."""
    done = {g.prompt_id: g.text for g in store.read()} if store is not None else {}
    todo = [(i, s) for i, s in enumerate(scenes) if s.scene_id not in done]
    sampling = Sampling(max_new_tokens=ecfg.max_new_tokens)
    writing = store.writer() if store is not None else nullcontext()
    with progress("describing scenes", len(scenes)) as bar, writing as writer:
        bar.advance(len(scenes) - len(todo))
        for start in range(0, len(todo), ecfg.batch_size):
            batch = todo[start : start + ecfg.batch_size]
            outs = engine.generate([render(s) for _, s in batch], [instruction_for(i) for i, _ in batch], sampling)
            for (_, scene), (text, n_tokens) in zip(batch, outs):
                done[scene.scene_id] = text
                if writer is not None:
                    writer.add(Generation(prompt_id=scene.scene_id, text=text, n_tokens=n_tokens))
            bar.advance(len(batch))
    return [done[s.scene_id] for s in scenes]


def evaluate_policy(
    policy: Path, wcfg: WorldConfig, ecfg: EvalConfig, out: Path | None = None, device: str = "cpu"
) -> dict[str, float]:
    """CHAIRs, CHAIRi, Cover, attribute error and mean length of the policy's greedy descriptions."""
    scenes = sample_scenes(wcfg.seed, ecfg.split, ecfg.n_scenes, wcfg.prior)
    store = None
    if out is not None:
        store = ShardedStore(Path(out) / "generations", Generation)
        # another policy, world or evaluation setting in the same folder is refused, never mixed into the metrics;
        # more scenes extend it (a split's first n scenes are the first n of any longer run), and the labeler's
        # questions are not stored
        store.bind_config({"policy": str(policy), "world": wcfg.model_dump(mode="json"), "eval": ecfg.model_dump()},
                          free={"eval.n_scenes", "eval.labeler_questions_per_scene"}, deliberate=None)
    texts = describe_scenes(HFEngine(policy, device=device), scenes, ecfg, store)
    return description_metrics(scenes, texts)


def evaluate_labeler(labeler: Path, wcfg: WorldConfig, ecfg: EvalConfig, device: str = "cpu") -> dict[str, float]:
    """Accuracy, hard-negative accuracy and false-rejection rate of the labeler on held-out yes/no claims."""
    # one-token scoring: much cheaper per item than generation, so 4x the generation batch
    return labeler_quality(labeler, wcfg, ecfg.split, ecfg.n_scenes, ecfg.labeler_questions_per_scene,
                           ecfg.batch_size * 4, device)

