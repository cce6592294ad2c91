"""Command line of best-of-N with the aligned policy's own reward: `rlaifv bon`.

    rlaifv bon --policy runs/iter/round-3/policy --reference runs/iter/round-3/reference --prompts prompts.jsonl \\
        --n 16 --out bon/                                   # OUT/best.jsonl: one chosen answer per prompt
    rlaifv bon ... --reward sum --beta 0.1 --sampler base-vlm/ --device cuda --config bon.yaml

Kill it anywhere and rerun the same command: it continues (sampling, then scoring) and never writes a prompt twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from rlaifv.cli.common import (
    DryRunOpt,
    ForceConfigOpt,
    JsonOpt,
    dry_run_result,
    emit,
    fail,
    load_config,
    local_engine_options,
    quiet_libraries,
    run_long,
    writing,
)
from rlaifv.config import BON_REWARDS, BonConfig


def _config(path: Optional[Path], **opts: Any) -> BonConfig:
    """BonConfig from the YAML file, then the command-line options that were given."""
    options = {(name,): opts.get(name) for name in ("n", "reward", "beta", "temperature", "max_new_tokens", "seed")}
    roles = [("policy",), ("reference",), ("sampler",)]
    for role in roles:
        options[(*role, "path")] = opts.get(role[0])
    cfg = load_config(BonConfig, path, options)
    local = {name: opts[name] for name in ("device", "dtype") if opts.get(name) is not None}
    if local:
        cfg = load_config(BonConfig, path, options | local_engine_options(cfg, roles, **local))
    return cfg


def _human(summary: dict[str, Any]) -> str:
    def num(x: Any, digits: int = 4) -> str:
        return "-" if x is None else f"{x:.{digits}f}"

    lines = [f"{summary['scored']} of {summary['prompts']} prompts answered, {summary['quarantined']} quarantined"
             + (f" ({summary['quarantine_reasons']})" if summary["quarantined"] else "")]
    if summary["candidates_set_aside"]:
        lines.append(f"candidates set aside: {summary['candidates_set_aside']}")
    lines.append(f"reward ({summary['reward']}): chosen {num(summary['mean_chosen_reward'])}, all candidates "
                 f"{num(summary['mean_candidate_reward'])}; tokens: chosen {num(summary['mean_chosen_tokens'], 1)}, "
                 f"all {num(summary['mean_candidate_tokens'], 1)}")
    lines.append(f"chosen sample index: {summary['chosen_index_counts']}")
    lines.append(f"best answers: {summary['best']}\nsummary: {summary['out']}/summary.json")
    return "\n".join(lines)


def _plan(cfg: BonConfig, prompts: Optional[Path], out: Path) -> dict[str, Any]:
    """The dry run: the three models' configs, and the samples and scoring it implies."""
    import math

    from rlaifv.cli.plan import check_engine, plan
    from rlaifv.prompts import count_prompt_rows

    models = [m for role in ("policy", "reference", "sampler") if cfg.names(role)
              for m in check_engine(role, getattr(cfg, role))]
    if prompts is not None:
        n = count_prompt_rows(prompts)
    else:
        from rlaifv.records import Prompt
        from rlaifv.store import ShardedStore

        n = len(ShardedStore(out / "prompts", Prompt))
    work = {"prompts": n, "samples": n * cfg.n, "generated_tokens_at_most": n * cfg.n * cfg.max_new_tokens,
            "scoring_rows_per_model": n * math.ceil(cfg.n / cfg.candidates_per_pack), "reward": cfg.reward}
    return plan("bon", cfg, world=False, models=models, work=work, warnings=[])


def register(app: typer.Typer) -> None:
    """Add `bon` to the main app."""

    @app.command()
    def bon(
        out: Path = typer.Option(..., "--out", file_okay=False,
                                 help="output folder: prompts, candidates, bon (every candidate's scores), "
                                      "best.jsonl / best.parquet (the chosen answers), summary.json"),
        prompts: Optional[Path] = typer.Option(None, "--prompts", exists=True,
                                               help="prompts: JSONL or Parquet (image path or bytes, question, "
                                                    "optional id) or a saved `datasets` folder; only needed the "
                                                    "first time"),
        policy: Optional[str] = typer.Option(None, "--policy", help="the aligned policy (folder or hub id): samples, "
                                                                    "unless --sampler is given, and scores"),
        reference: Optional[str] = typer.Option(None, "--reference",
                                                help="the reference the policy was aligned against (folder or hub "
                                                     "id), e.g. the round's starting policy; same tokenizer; not "
                                                     "needed with --reward likelihood"),
        sampler: Optional[str] = typer.Option(None, "--sampler", help="a separate model that draws the samples "
                                                                      "(default: the policy)"),
        n: Optional[int] = typer.Option(None, "--n", min=1, help="samples per prompt (default 16)"),
        reward: Optional[str] = typer.Option(None, "--reward", help="mean: beta/T * sum of log-ratios, T = response "
                                                                    "tokens (default, the paper's) | sum: without "
                                                                    "the 1/T, prefers short answers | likelihood: "
                                                                    "the policy's mean log-prob per token, no "
                                                                    "--reference needed"),
        beta: Optional[float] = typer.Option(None, "--beta",
                                             help="the policy's DPO beta (default 0.1); scales every reward alike"),
        temperature: Optional[float] = typer.Option(None, "--temperature",
                                                    help="sampling temperature (default 0.7)"),
        max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1,
                                                     help="cap on a sample's length (default 512)"),
        seed: Optional[int] = typer.Option(None, "--seed", help="sampling seed (default 0)"),
        device: Optional[str] = typer.Option(None, "--device", help="torch device of every model loaded here, e.g. "
                                                                    "cuda (default cpu)"),
        dtype: Optional[str] = typer.Option(None, "--dtype", help="float32 (default) | bfloat16 | float16, for "
                                                                  "every model"),
        config: Optional[Path] = typer.Option(None, "--config", exists=True, dir_okay=False,
                                              help="YAML with BonConfig fields (top_p, max_length, "
                                                   "candidates_per_pack, per-model devices, ...); the options here "
                                                   "override it"),
        as_json: bool = JsonOpt,
        dry_run: bool = DryRunOpt,
        force_config: bool = ForceConfigOpt,
    ) -> None:
        """Best-of-N with self-feedback: sample N answers per prompt, score each with the aligned policy's implicit
        reward against the reference (or its own likelihood, --reward likelihood), keep the best. Resumable; a rerun
        with other settings is refused (see --force-config)."""
        if reward is not None and reward not in BON_REWARDS:
            raise typer.BadParameter(f"{reward!r} is not one of {', '.join(BON_REWARDS)}", param_hint="--reward")
        cfg = _config(config, policy=policy, reference=reference, sampler=sampler, n=n, reward=reward, beta=beta,
                      temperature=temperature, max_new_tokens=max_new_tokens, seed=seed, device=device, dtype=dtype)
        for role in cfg.required_roles():
            if not cfg.names(role):
                fail(f"--{role} is required with reward {cfg.reward!r} (or {role}.path in --config, or a served "
                     f"{role}: {role}: {{kind: openai, urls: [...], model: NAME}})", 2)
        if prompts is None and not (out / "prompts" / "shards").exists():
            fail("--prompts is required the first time (no prompts stored in --out yet)", 2)
        if dry_run:
            dry_run_result(lambda: _plan(cfg, prompts, out), as_json)
            return
        quiet_libraries()
        from rlaifv.pipelines.best_of_n import best_of_n

        with writing(out):
            summary = run_long(best_of_n, out, cfg, prompts, force_config)
        emit(summary, as_json, _human(summary))
