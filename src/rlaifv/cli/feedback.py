"""Command line of the feedback engine: `rlaifv collect` (all stages) and one command per stage.

    rlaifv world prompts --split prompts --n 256 --out prompts.jsonl
    rlaifv collect --prompts prompts.jsonl --out feedback/   # candidates -> claims -> verdicts -> pairs
    rlaifv sample --prompts prompts.jsonl --out feedback/ --n 8   # or stage by stage
    rlaifv claims --out feedback/ ; rlaifv judge --out feedback/ ; rlaifv pairs --out feedback/
    rlaifv export --out feedback/ --format trl --to pairs.parquet

Every command resumes: rerun it after a crash and it does only what is missing. On the world's prompts (a file
`rlaifv world prompts` wrote) the defaults are the world's rounds' and models left unset are the world's tiny
models; on any other prompts the defaults are the paper's and every model a stage loads must be named (--policy,
--labeler, --splitter-model with --splitter llm): a missing one is an error before anything loads. `--dry-run`
checks the config and prints what would run.
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
    exit_on_error,
    fail,
    local_engine_options,
    prompts_are_world,
    quiet_libraries,
    resolve_config,
    writing,
)
from rlaifv.config import CollectConfig

OutOpt = typer.Option(..., "--out", file_okay=False, help="output folder; one sub-folder per stage")
PromptsOpt = typer.Option(None, "--prompts", exists=True,
                          help="prompts: JSONL or Parquet (image path or bytes, question, optional id) or a saved "
                               "`datasets` folder; only needed the first time")
CollectConfigOpt = typer.Option(None, "--config", exists=True, dir_okay=False,
                                help="YAML with CollectConfig fields (sample/claims/judge/pairs); options below "
                                     "override it")
NOpt = typer.Option(None, "--n", min=1, help="responses per prompt (default 10)")
TempOpt = typer.Option(None, "--temperature", min=0.0, help="sampling temperature (default 0.7)")
MaxTokOpt = typer.Option(None, "--max-new-tokens", min=1, help="cap on a response's length (default 512, the "
                                                                "paper's; 96 on world prompts)")
PolicyOpt = typer.Option(None, "--policy", help="policy model folder or hub id (required, except on world prompts: "
                                                "the world's policy)")
LabelerOpt = typer.Option(None, "--labeler", help="labeler VLM folder or hub id (required, except on world "
                                                  "prompts: the world's labeler)")
SplitterOpt = typer.Option(None, "--splitter", help="rules | llm (default rules)")
SplitterModelOpt = typer.Option(None, "--splitter-model", help="chat causal LM (folder or hub id) for --splitter llm "
                                                               "(required, except on world prompts: the world's "
                                                               "splitter)")
ModeOpt = typer.Option(None, "--mode", help="claims (divide and conquer) | holistic (one question per response)")
DeviceOpt = typer.Option(None, "--device", help="torch device for every model loaded here, e.g. cuda (default "
                                                 "cpu)")
SeedOpt = typer.Option(None, "--seed", help="sampling and pairing seed (default 0)")
WorldSeedOpt = typer.Option(0, "--world-seed", help="seed of the world whose models fill unset model paths")


def _config(config: Optional[Path], world: bool, **opts: Any) -> CollectConfig:
    """CollectConfig from the YAML file, then the command-line options that were given, over the world's defaults
    on world prompts and the paper's on any other."""
    options = {
        ("sample", "n"): opts.get("n"),
        ("sample", "temperature"): opts.get("temperature"),
        ("sample", "max_new_tokens"): opts.get("max_new_tokens"),
        ("sample", "seed"): opts.get("seed"),
        ("pairs", "seed"): opts.get("seed"),
        ("claims", "splitter"): opts.get("splitter"),
        ("judge", "mode"): opts.get("mode"),
        ("sample", "policy", "path"): opts.get("policy"),
        ("judge", "labeler", "path"): opts.get("labeler"),
        ("claims", "splitter_model", "path"): opts.get("splitter_model"),
    }
    cfg = resolve_config(CollectConfig, config, options, world)
    if opts.get("device"):
        roles = (("sample", "policy"), ("judge", "labeler"), ("claims", "splitter_model"))
        cfg = resolve_config(CollectConfig, config, options | local_engine_options(cfg, roles, device=opts["device"]),
                             world)
    return cfg


def _command(stages: list[str], out: Path, prompts: Optional[Path], config: Optional[Path], world_seed: int,
             as_json: bool, dry_run: bool, opts: dict[str, Any], force_config: bool = False) -> None:
    """One feedback command: which prompts these are decides the defaults and whether unset models may be the
    world's; then a dry run's plan, or the stages."""
    from rlaifv.pipelines.collect import missing_models, no_world_models

    if "prompts" in stages and prompts is None and not (out / "prompts" / "shards").exists():
        fail("--prompts is required the first time (no prompts stored in --out yet)", 2)
    world = prompts_are_world(prompts, out)
    cfg = _config(config, world, **opts)
    missing = [] if world else missing_models(cfg, stages)
    if missing:  # before anything loads: the world's models never answer for a user's prompts
        fail(no_world_models(missing, f"the prompts in {prompts}" if prompts else f"the prompts stored in {out}"), 2)
    if dry_run:
        dry_run_result(lambda: _plan(stages, prompts, out, cfg, world, force_config), as_json)
        return
    _run(stages, prompts, out, cfg, world_seed, as_json, force_config)


def _plan(stages: list[str], prompts: Optional[Path], out: Path, cfg: CollectConfig, world: bool,
          force_config: bool) -> dict[str, Any]:
    from rlaifv.cli.plan import check_engine, collect_work, plan
    from rlaifv.pipelines.collect import check_configs
    from rlaifv.prompts import count_prompt_rows

    check_configs(out, cfg, stages, force_config)  # a rerun the stages would refuse is refused here too

    roles = {"sample": ("sample.policy", cfg.sample.policy), "judge": ("judge.labeler", cfg.judge.labeler),
             "claims": ("claims.splitter_model", cfg.claims.splitter_model)}
    models = []
    for stage, (field, engine) in roles.items():
        if stage in stages and (stage != "claims" or (cfg.claims.splitter == "llm" and cfg.judge.mode == "claims")):
            models += check_engine(field, engine, world)
    warnings = []
    if prompts is not None:
        n_prompts = count_prompt_rows(prompts)
    else:
        from rlaifv.pipelines.collect import stores

        n_prompts = len(stores(out)["prompts"])
        warnings.append(f"no --prompts: the {n_prompts} prompts stored in {out}")
    return plan("collect" if len(stages) > 1 else stages[0], cfg, world=world, models=models,
                work=collect_work(cfg, n_prompts, world), warnings=warnings)


def _run(stages: list[str], prompts: Optional[Path], out: Path, cfg: CollectConfig, world_seed: int,
         as_json: bool, force_config: bool = False) -> None:
    from rlaifv.pipelines.collect import check_configs, run_stage, summarize, write_summary
    from rlaifv.world.config import WorldConfig

    quiet_libraries()
    results = {}
    with writing(out), exit_on_error():  # the stages and the summary: one process at a time in OUT
        check_configs(out, cfg, stages, force_config)  # a changed setting is refused before anything runs
        for stage in stages:
            if stage == "prompts" and prompts is None:
                continue
            results[stage] = run_stage(stage, prompts, out, cfg, WorldConfig(seed=world_seed), force_config)
        summary = summarize(out, results, cfg)
        write_summary(out, summary)
    human = "\n".join(f"{name}: {info}" for name, info in summary["stages"].items())
    if summary.get("feedback_precision") is not None:
        human += (f"\nfeedback precision {summary['feedback_precision']:.3f} (counting every error: "
                  f"{summary['error_precision']:.3f}), true ties {summary['true_tie_rate']:.3f} over "
                  f"{summary['n_pairs']} pairs")
    human += f"\n{len(summary['deviations'])} settings differ from the paper's (listed in {out / 'report.md'})"
    emit(summary, as_json, human + f"\nsummary: {out / 'summary.json'}")


def _options(given: dict[str, Any]) -> dict[str, Any]:
    """A command's config options out of its arguments."""
    return {k: v for k, v in given.items()
            if k not in ("out", "prompts", "config", "world_seed", "as_json", "dry_run", "force_config")}


def register(app: typer.Typer) -> None:
    """Add the feedback commands to the main app."""

    @app.command()
    def collect(
        out: Path = OutOpt, prompts: Optional[Path] = PromptsOpt, config: Optional[Path] = CollectConfigOpt,
        n: Optional[int] = NOpt, temperature: Optional[float] = TempOpt, max_new_tokens: Optional[int] = MaxTokOpt,
        policy: Optional[str] = PolicyOpt, labeler: Optional[str] = LabelerOpt, splitter: Optional[str] = SplitterOpt,
        splitter_model: Optional[str] = SplitterModelOpt, mode: Optional[str] = ModeOpt,
        device: Optional[str] = DeviceOpt, seed: Optional[int] = SeedOpt, world_seed: int = WorldSeedOpt,
        as_json: bool = JsonOpt, dry_run: bool = DryRunOpt, force_config: bool = ForceConfigOpt,
    ) -> None:
        """Collect preference pairs: sample N responses per prompt, split them into claims, judge every claim
        with the labeler, pair responses by score. Writes OUT/summary.json and OUT/report.md. A rerun resumes; one
        with other settings than a stage was run with is refused (see --force-config)."""
        _command(["prompts", "sample", "claims", "judge", "pairs"], out, prompts, config, world_seed, as_json,
                 dry_run, _options(locals()), force_config)

    @app.command()
    def sample(
        out: Path = OutOpt, prompts: Optional[Path] = PromptsOpt, config: Optional[Path] = CollectConfigOpt,
        n: Optional[int] = NOpt, temperature: Optional[float] = TempOpt, max_new_tokens: Optional[int] = MaxTokOpt,
        policy: Optional[str] = PolicyOpt, device: Optional[str] = DeviceOpt, seed: Optional[int] = SeedOpt,
        world_seed: int = WorldSeedOpt, as_json: bool = JsonOpt, force_config: bool = ForceConfigOpt,
    ) -> None:
        """Deconfounded sampling: N responses per prompt with one decoding setting (OUT/candidates). A rerun
        resumes; one with another setting (temperature, N, policy, ...) is refused (see --force-config)."""
        _command(["prompts", "sample"], out, prompts, config, world_seed, as_json, False, _options(locals()),
                 force_config)

    @app.command()
    def claims(
        out: Path = OutOpt, config: Optional[Path] = CollectConfigOpt, splitter: Optional[str] = SplitterOpt,
        splitter_model: Optional[str] = SplitterModelOpt, device: Optional[str] = DeviceOpt,
        world_seed: int = WorldSeedOpt, as_json: bool = JsonOpt, force_config: bool = ForceConfigOpt,
    ) -> None:
        """Divide: split every response into statements and yes/no questions (OUT/claims). A rerun resumes; one
        with another splitter setting is refused (see --force-config)."""
        _command(["claims"], out, None, config, world_seed, as_json, False, _options(locals()), force_config)

    @app.command()
    def judge(
        out: Path = OutOpt, config: Optional[Path] = CollectConfigOpt, labeler: Optional[str] = LabelerOpt,
        mode: Optional[str] = ModeOpt, device: Optional[str] = DeviceOpt, world_seed: int = WorldSeedOpt,
        as_json: bool = JsonOpt, force_config: bool = ForceConfigOpt,
    ) -> None:
        """Conquer: the labeler's P(yes)/P(no) for every claim against the image (OUT/verdicts). A rerun resumes;
        one with another labeler or judge setting is refused (see --force-config)."""
        _command(["judge"], out, None, config, world_seed, as_json, False, _options(locals()), force_config)

    @app.command()
    def pairs(
        out: Path = OutOpt, config: Optional[Path] = CollectConfigOpt, seed: Optional[int] = SeedOpt,
        as_json: bool = JsonOpt,
    ) -> None:
        """Score responses (-rejected claims) and build preference pairs (OUT/preferences)."""
        _command(["pairs"], out, None, config, 0, as_json, False, _options(locals()))

    @app.command()
    def export(
        out: Path = typer.Option(..., "--out", exists=True, file_okay=False, help="a collect output folder"),
        fmt: str = typer.Option("trl", "--format", help="trl (prompt/chosen/rejected messages + images) | "
                                                        "rlaifv-dataset (the RLAIF-V-Dataset columns)"),
        to: Path = typer.Option(..., "--to", dir_okay=False, help="Parquet file to write"),
        as_json: bool = JsonOpt,
    ) -> None:
        """Export the pairs as Parquet that `datasets.load_dataset("parquet", ...)` reads unchanged."""
        from rlaifv.feedback.export import export_rlaifv_dataset, export_trl
        from rlaifv.pipelines.collect import stores
        from rlaifv.preferences import pair_store

        writers = {"trl": export_trl, "rlaifv-dataset": export_rlaifv_dataset}
        if fmt not in writers:
            raise typer.BadParameter(f"{fmt!r} is not one of {', '.join(writers)}", param_hint="--format")
        found = pair_store(out)
        writers[fmt](found, stores(out)["prompts"], to)
        emit({"path": str(to), "format": fmt, "pairs": len(found)}, as_json,
              f"wrote {len(found)} pairs to {to} ({fmt})")


