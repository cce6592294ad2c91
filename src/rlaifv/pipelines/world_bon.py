"""Best-of-N on the world's `test` split: how hallucination and length move with N and with the reward's form.

The aligned policy draws `n_max` answers per held-out scene (temperature 0.7, one decoding setting), `rlaifv bon`'s
pipeline scores them all once under the policy and its reference, and every (N, reward) cell is then read from those
stored log-probs: best-of-N keeps the best of the *first* N samples, so the N=1 row is plain sampling from the same
policy and every larger N adds samples to the same pool. Every form (config.BON_REWARDS) is recomputed from the same
sums, so all of them rank exactly the same candidates.

The world's reward is the policy's likelihood (WORLD_BON_REWARD), the paper's 'mean' and 'sum' are reported beside
it: on the development seeds the log-ratio ranked the policy's own answers by their truth no better than chance,
and best-of-N with it did not lower CHAIRs (infer.bon; benchmarks/RESULTS.md).

Why both forms: r_sum = beta * sum_t log(pi/pi_ref) grows in magnitude with the answer's length, so whenever the
policy's per-token reward is negative on average -- a policy that learned to say less -- the sum prefers short
answers, which in this world also name fewer real objects (Cover). The mean form divides that length out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlaifv.config import BonConfig, EvalConfig, HFEngineConfig
from rlaifv.eval.world_metrics import description_metrics
from rlaifv.infer.bon import choose, row_rewards
from rlaifv.pipelines.best_of_n import best_of_n, bon_stores
from rlaifv.prompts import scene_of, write_world_prompts
from rlaifv.records import BonRow
from rlaifv.world.config import WORLD_SAMPLE_BATCH, WorldConfig

BON_NS = (1, 2, 4, 8, 16)  # the N of each row; the first N of the n_max samples
BON_KINDS = ("likelihood", "mean", "sum")  # every form the report shows, the world's first
WORLD_BON_REWARD = "likelihood"  # the reward the world's best-of-N ranks by (a deviation from the paper's 'mean')
BON_TEMPERATURE = 0.7  # the paper's sampling temperature for best-of-N
BON_KEYS = ("n", "reward", "chair_s", "chair_i", "cover", "mean_len")  # one report.json["bon"] row


def pick_first_n(row: BonRow, n: int, kind: str) -> int:
    """Index of the answer best-of-n keeps among the row's first n samples under reward `kind`; lowest index on ties.

    A sample that could not be scored is never chosen; when none of the first n can be, the first sample is kept, as
    plain sampling would."""
    best = choose(row_rewards(row, kind)[:n])
    return 0 if best is None else best


def bon_table(rows: Sequence[BonRow], scenes: dict[str, Any], ns: Sequence[int] = BON_NS,
              kinds: Sequence[str] = BON_KINDS) -> list[dict[str, Any]]:
    """One row per (reward kind, N): the world metrics of the chosen answers over every scene in `rows`."""
    if not rows:
        raise ValueError("no scored prompts to build a best-of-N table from")
    have = min(len(r.texts) for r in rows)
    if max(ns) > have:
        raise ValueError(f"best-of-{max(ns)} needs {max(ns)} samples per prompt; the store has {have}")
    table = []
    for kind in kinds:
        for n in ns:
            chosen = [r.texts[pick_first_n(r, n, kind)] for r in rows]
            metrics = description_metrics([scenes[r.prompt_id] for r in rows], chosen)
            table.append({"n": n, "reward": kind, **{k: metrics[k] for k in BON_KEYS[2:]}})
    return table


def world_bon_config(policy: str, reference: str, wcfg: WorldConfig, ecfg: EvalConfig, n_max: int = max(BON_NS),
                     device: str = "cpu") -> BonConfig:
    """The world's best-of-N: `n_max` samples at the paper's temperature, the world's reward; the reference is
    scored too, so the report can show the paper's forms from the same samples."""
    return BonConfig(policy=HFEngineConfig(path=policy, device=device),
                     reference=HFEngineConfig(path=reference, device=device),
                     n=n_max, reward=WORLD_BON_REWARD, temperature=BON_TEMPERATURE,
                     max_new_tokens=ecfg.max_new_tokens, seed=wcfg.seed, prompts_per_batch=WORLD_SAMPLE_BATCH)


def world_bon(out: Path, policy: str, reference: str, wcfg: WorldConfig, ecfg: EvalConfig, n_max: int = max(BON_NS),
              device: str = "cpu") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Sample `n_max` answers per `test` scene from `policy`, score them against `reference` (resumable, under `out`).

    Returns the (N, reward) table for every N of BON_NS up to n_max, and `rlaifv bon`'s summary (prompts scored and
    quarantined, with reasons: the table covers the scored ones)."""
    out = Path(out)
    prompts = out / "prompts.jsonl"
    if not prompts.exists():
        write_world_prompts(wcfg.seed, ecfg.split, ecfg.n_scenes, prompts, wcfg.prior)
    cfg = world_bon_config(policy, reference, wcfg, ecfg, n_max, device)
    summary = best_of_n(out, cfg, prompts)
    stores = bon_stores(out, cfg.shard_size)
    scenes = {p.prompt_id: scene_of(p) for p in stores["prompts"].read()}
    return bon_table(stores["bon"].read_all(), scenes, [n for n in BON_NS if n <= n_max]), summary
