"""Command line of the iterative rounds: `rlaifv iterate`.

    rlaifv iterate --out runs/iter                                   # the world: fresh scenes and models, 3 rounds
    rlaifv iterate --out runs/mine --prompts mine.jsonl --policy my-vlm/ --labeler big-vlm/ --dry-run
                                                                     # the paper's settings, checked, nothing run
    rlaifv iterate --out runs/iter --rounds 4                        # continue a finished run with a 4th round
    rlaifv iterate --out runs/mine --prompts mine.jsonl --policy my-vlm/ --labeler big-vlm/ --device cuda \\
        --config iterate.yaml                                        # a user's data: select on reward accuracy
    rlaifv iterate --out runs/mine --prompts mine.jsonl --select-on chair --select-data objhal_val.jsonl \
        --select-truth objhal_val_truth.jsonl                        # ... or on a held-out Object HalBench file

Kill it anywhere and rerun the same command: it continues from the last finished step (OUT/state.json).

Without --prompts, or with a file `rlaifv world prompts` wrote, the rounds run on the world with its own defaults
(`rlaifv.world.config.WORLD_ROUNDS`); on any other prompts file the defaults are the paper's and --policy and
--labeler (and --splitter-model with --splitter llm) are required.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from rlaifv.cli.common import (
    DryRunOpt,
    JsonOpt,
    dry_run_result,
    emit,
    fail,
    local_engine_options,
    prompts_are_world,
    quiet_libraries,
    resolve_config,
    run_long,
    world_config,
    writing,
)
from rlaifv.config import IterateConfig


def _config(path: Optional[Path], world: bool, **opts: Any) -> IterateConfig:
    """IterateConfig from the YAML file, then the command-line options that were given, over the world's defaults
    on world prompts and the paper's on any other."""
    options = {
        ("rounds",): opts.get("rounds"),
        ("prompts_per_round",): opts.get("prompts_per_round"),
        ("select_on",): opts.get("select_on"),
        ("select_benchmark", "data"): opts.get("select_data"),
        ("select_benchmark", "truth"): opts.get("select_truth"),
        ("select_benchmark", "images"): opts.get("select_images"),
        ("collect", "sample", "policy", "path"): opts.get("policy"),
        ("collect", "judge", "labeler", "path"): opts.get("labeler"),
        ("collect", "claims", "splitter"): opts.get("splitter"),
        ("collect", "claims", "splitter_model", "path"): opts.get("splitter_model"),
    }
    if opts.get("seed") is not None:
        for key in (("seed",), ("collect", "sample", "seed"), ("collect", "pairs", "seed"), ("dpo", "seed")):
            options[key] = opts["seed"]
    if not opts.get("device"):
        return resolve_config(IterateConfig, path, options, world)
    options[("device",)] = opts["device"]
    if opts["device"] == "cpu":
        options[("dpo", "use_cpu")] = True
    cfg = resolve_config(IterateConfig, path, options, world)
    roles = (("collect", "sample", "policy"), ("collect", "judge", "labeler"), ("collect", "claims", "splitter_model"))
    return resolve_config(IterateConfig, path, options | local_engine_options(cfg, roles, device=opts["device"]),
                          world)


def _plan(cfg: IterateConfig, prompts: Optional[Path], inputs: dict[str, Any], select_on: str) -> dict[str, Any]:
    """The dry run: every model the rounds load, the benchmark files of chair / amber selection, the work."""
    from rlaifv.cli.plan import check_engine, iterate_work, plan

    world = inputs["world_prompts"]
    collect = cfg.collect
    models = check_engine("collect.sample.policy", collect.sample.policy, world)
    models += check_engine("collect.judge.labeler", collect.judge.labeler, world)
    if collect.claims.splitter == "llm" and collect.judge.mode == "claims":
        models += check_engine("collect.claims.splitter_model", collect.claims.splitter_model, world)
    warnings = []
    if select_on in ("chair", "amber"):
        from rlaifv.pipelines.selection import BenchmarkSelector

        items = BenchmarkSelector(select_on, cfg.select_benchmark).items()
        warnings.append(f"selection answers {len(items)} held-out {select_on} prompts per checkpoint")
    return plan("iterate", cfg, world=world, models=models,
                work=iterate_work(cfg, inputs["prompt_rows"], world, select_on), warnings=warnings)


def _table(summary: dict[str, Any]) -> str:
    """One line per round for the terminal."""
    from rlaifv.eval.report import kept_reason

    lines = []
    for row in summary["rounds"]:
        parts = [f"round {row['round']}"]
        if "chair_s" in row:
            parts.append(f"CHAIRs {row['chair_s']:.3f} CHAIRi {row['chair_i']:.3f} Cover {row['cover']:.3f} "
                         f"length {row['mean_len']:.1f}")
        if row["round"] > 0:
            parts.append(f"{row['n_pairs']} pairs")
            if row.get("feedback_precision") is not None:
                parts.append(f"feedback precision {row['feedback_precision']:.3f}")
            selection = row.get("selection") or {}
            if row.get("select_on") == "reward" and "accuracy" in selection:
                parts.append(f"held-out reward accuracy {selection['accuracy']:.3f}")
            elif row.get("select_on") == "chair" and selection.get("chair_s_refine") is not None:
                parts.append(f"held-out CHAIRs refine {selection['chair_s_refine']:.3f}")
            elif row.get("select_on") == "amber" and selection:
                parts.append("held-out AMBER " + ", ".join(f"{k} {selection[k]}" for k in ("amber_score", "f1",
                                                                                              "chair")
                                                            if selection.get(k) is not None))
            parts.append(row.get("skipped") or f"step {row['step']}")
            if kept_reason(row):
                parts.append(f"kept its start: {kept_reason(row)}")
        lines.append(", ".join(parts))
    lines.append(f"{len(summary.get('deviations', []))} settings differ from the paper's (listed in "
                 f"{summary['out']}/report.md)")
    return "\n".join(lines) + f"\npolicy: {summary['policy']}\nsummary: {summary['out']}/summary.json"


def register(app: typer.Typer) -> None:
    """Add `iterate` to the main app."""

    @app.command()
    def iterate(
        out: Path = typer.Option(..., "--out", file_okay=False,
                                 help="output folder: state.json, summary.json and one round-K folder per round"),
        prompts: Optional[Path] = typer.Option(None, "--prompts", exists=True,
                                               help="prompts file (as for `rlaifv collect`): each round draws its own "
                                                    "slice of --prompts-per-round rows (fresh_prompts: false in the "
                                                    "config: the whole file every round); default: fresh scenes of "
                                                    "the world's prompts split each round"),
        rounds: Optional[int] = typer.Option(None, "--rounds", min=0, help="rounds to run (default 4, the paper's; "
                                                                           "3 on the world); raise it to continue a "
                                                                           "finished run"),
        prompts_per_round: Optional[int] = typer.Option(None, "--prompts-per-round", min=1,
                                                        help="prompts each round collects on (default 4000, the "
                                                             "paper's; 768 on the world)"),
        select_on: Optional[str] = typer.Option(None, "--select-on",
                                                help="how a round picks its checkpoint: world (CHAIRs on the world's "
                                                     "val scenes, Cover kept) | reward (implicit-reward accuracy on "
                                                     "held-out pairs) | chair | amber (a held-out benchmark file: "
                                                     "--select-data) | auto (default: world on world prompts, "
                                                     "reward on a prompts file)"),
        select_data: Optional[str] = typer.Option(None, "--select-data",
                                                  help="--select-on chair: Object HalBench prompts JSONL; amber: "
                                                       "AMBER's root folder. Held out: never the file the report "
                                                       "uses"),
        select_truth: Optional[str] = typer.Option(None, "--select-truth",
                                                   help="--select-on chair: ground truth JSONL or COCO annotations "
                                                        "folder"),
        select_images: Optional[str] = typer.Option(None, "--select-images",
                                                    help="image folder of --select-data (default as for `rlaifv eval "
                                                         "generate`)"),
        config: Optional[Path] = typer.Option(None, "--config", exists=True, dir_okay=False,
                                              help="YAML with IterateConfig fields (the collect, dpo and eval "
                                                   "sections and the selection settings); the options here override "
                                                   "it"),
        policy: Optional[str] = typer.Option(None, "--policy", help="starting policy, folder or hub id (required "
                                                                    "with a prompts file; the world's on world "
                                                                    "prompts)"),
        labeler: Optional[str] = typer.Option(None, "--labeler", help="labeler VLM, fixed over the rounds (required "
                                                                      "with a prompts file; the world's on world "
                                                                      "prompts)"),
        splitter: Optional[str] = typer.Option(None, "--splitter", help="rules | llm (default rules)"),
        splitter_model: Optional[str] = typer.Option(None, "--splitter-model",
                                                     help="chat causal LM for --splitter llm (required with a "
                                                          "prompts file; the world's on world prompts)"),
        device: Optional[str] = typer.Option(None, "--device", help="torch device of every model loaded here, e.g. "
                                                                    "cuda (default cpu; DPO uses a GPU when there is "
                                                                    "one unless this is cpu)"),
        seed: Optional[int] = typer.Option(None, "--seed", help="base seed of sampling, pairing, DPO data order and "
                                                                "the held-out draw; round k adds k - 1 (default 0)"),
        world_seed: int = typer.Option(0, "--world-seed", help="seed of the world: its models and scenes"),
        preset: str = typer.Option("default", "--preset", help="world preset: default | micro (seconds, tests)"),
        as_json: bool = JsonOpt,
        dry_run: bool = DryRunOpt,
    ) -> None:
        """Iterative RLAIF-V: each round collects feedback with the current policy, trains it with DPO against
        itself as reference, and keeps its best checkpoint as the next round's policy. Resumable."""
        if select_on is not None and select_on not in ("auto", "world", "reward", "chair", "amber"):
            raise typer.BadParameter(f"{select_on!r} is not one of auto, world, reward, chair, amber",
                                     param_hint="--select-on")
        on_world = prompts is None or prompts_are_world(prompts)
        cfg = _config(config, on_world, rounds=rounds, prompts_per_round=prompts_per_round, select_on=select_on,
                      policy=policy, labeler=labeler, splitter=splitter, splitter_model=splitter_model, device=device,
                      seed=seed, select_data=select_data, select_truth=select_truth, select_images=select_images)
        from rlaifv.pipelines.loop import check_inputs, resolved_select_on

        try:  # before anything loads: missing models, too few prompts
            inputs = check_inputs(cfg, prompts)
        except ValueError as exc:
            fail(str(exc), 2)
        if dry_run:
            dry_run_result(lambda: _plan(cfg, prompts, inputs, resolved_select_on(cfg, prompts)), as_json)
            return
        quiet_libraries()
        world = world_config(preset, None, world_seed)
        from rlaifv.pipelines.loop import iterate as run_rounds

        with writing(out):
            summary = run_long(run_rounds, out, cfg, prompts, world)
        emit(summary, as_json, _table(summary))
