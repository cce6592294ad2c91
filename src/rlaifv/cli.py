"""The `rlaifv` command line. With `--json`, a command prints exactly one JSON object on stdout; everything else
(progress bars, logs) goes to stderr."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from rlaifv.config import EvalConfig, load_yaml
from rlaifv.progress import log
from rlaifv.world.config import WorldConfig

app = typer.Typer(
    help="Align vision-language models against hallucination with feedback from open models (RLAIF-V).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
world_app = typer.Typer(help="The synthetic visual world: scenes with exact ground truth and tiny VLMs.",
                        no_args_is_help=True)
eval_app = typer.Typer(help="Hallucination evaluation.", no_args_is_help=True)
app.add_typer(world_app, name="world")
app.add_typer(eval_app, name="eval")

SeedOpt = typer.Option(0, "--seed", help="seed of the world: scenes, captions, model init, training order")
PresetOpt = typer.Option("default", "--preset", help="world preset: 'default' (the demo) or 'micro' (seconds, tests)")
ConfigOpt = typer.Option(None, "--config", exists=True, dir_okay=False,
                         help="YAML file with WorldConfig fields; overrides the preset, --seed overrides it")
JsonOpt = typer.Option(False, "--json", help="print one JSON object on stdout")


def _quiet_libraries() -> None:
    """Keep third-party chatter (download bars, torchvision notices) off the user's terminal."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _world_config(preset: str, config: Optional[Path], seed: int) -> WorldConfig:
    """Preset, then the YAML file's fields, then --seed; a bad file is a readable error, not a traceback."""
    from pydantic import ValidationError

    try:
        base = WorldConfig.preset(preset).model_dump()  # type: ignore[arg-type]
        if config is not None:
            base.update(load_yaml(WorldConfig, config).model_dump(exclude_unset=True))
        base["seed"] = seed
        return WorldConfig.model_validate(base)
    except (ValidationError, ValueError, OSError) as exc:
        log(f"[red]error:[/red] {config or 'config'}: {exc}")
        raise typer.Exit(2) from None


def _emit(obj: Any, as_json: bool, human: str) -> None:
    if as_json:
        typer.echo(json.dumps(obj))
    else:
        log(human)


def _run_long(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a long command's library call; its errors become a one-line message and an exit code (2: a missing
    package, 1: bad input or files) instead of a traceback."""
    try:
        return fn(*args)
    except ImportError as exc:
        log(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    except (ValueError, OSError) as exc:
        log(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


@app.command()
def demo(
    workdir: Path = typer.Option(Path("rlaifv-demo"), "--workdir", help="folder for every output and the report"),
    seed: int = SeedOpt,
    preset: str = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    n_test: int = typer.Option(500, "--n-test", min=1, help="held-out test scenes to evaluate on"),
    rounds: Optional[int] = typer.Option(None, "--rounds", min=0,
                                         help="iterative rounds after the bootstrap (default 4, the paper's count, "
                                              "within 10 minutes on a 2-core CPU; 0: evaluate the base models only)"),
    bon_samples: Optional[int] = typer.Option(None, "--bon-samples", min=0,
                                              help="answers per test scene for the best-of-N section, which reports "
                                                   "N = 1, 2, 4, ... up to this (default 16; 0 skips it)"),
    as_json: bool = JsonOpt,
) -> None:
    """Run RLAIF-V end to end on the built-in synthetic world (no download, no GPU): bootstrap, iterative rounds of
    feedback and DPO, evaluation; writes report.md/.json. Rerun after a crash to continue."""
    _quiet_libraries()
    from rlaifv.demo import run_demo

    try:
        given = {"rounds": rounds, "bon_samples": bon_samples}
        extra = {k: v for k, v in given.items() if v is not None}
        report = run_demo(workdir, seed, _world_config(preset, config, seed), EvalConfig(n_scenes=n_test), **extra)
    except ValueError as exc:
        log(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    lines = [f"base policy: CHAIRs {r['chair_s']:.3f}, CHAIRi {r['chair_i']:.3f}, Cover {r['cover']:.3f}"
             if r["round"] == 0 else
             f"round {r['round']}: CHAIRs {r['chair_s']:.3f}, CHAIRi {r['chair_i']:.3f}, Cover {r['cover']:.3f} "
             f"({r['n_pairs']} pairs, feedback precision {_fraction(r['feedback_precision'])})"
             for r in report["rounds"]]
    lines += [f"best-of-{r['n']} ({r['reward']} reward): CHAIRs {r['chair_s']:.3f}, Cover {r['cover']:.3f}, "
              f"{r['mean_len']:.1f} words" for r in report.get("bon", []) if r["n"] in (1, 8)]
    lab = report["labeler"]
    lines.append(f"labeler accuracy {lab['accuracy']:.3f}, false rejections {lab['false_rejection_rate']:.4f}")
    _emit(report, as_json, "\n".join(lines))


def _fraction(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.3f}"


@world_app.command("bootstrap")
def world_bootstrap(
    seed: int = SeedOpt,
    preset: str = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    force: bool = typer.Option(False, "--force", help="rebuild even when a cached build exists"),
    as_json: bool = JsonOpt,
) -> None:
    """Train the world's base policy (hallucinates) and labeler (accurate), or reuse the cached pair."""
    _quiet_libraries()
    from rlaifv.world.bootstrap import bootstrap

    models = bootstrap(_world_config(preset, config, seed), force=force)
    out = {"policy": str(models.policy), "labeler": str(models.labeler), "key": models.manifest["key"],
           "seconds": models.manifest["seconds"], "train": models.manifest["train"]}
    _emit(out, as_json, f"policy: {models.policy}\nlabeler: {models.labeler}")


@world_app.command("show")
def world_show(
    out: Path = typer.Option(Path("world.png"), "--out", help="PNG file to write"),
    split: str = typer.Option("train", "--split", help="train | prompts | val | test"),
    n: int = typer.Option(8, "--n", min=1, max=64, help="scenes to draw"),
    seed: int = SeedOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Draw a few scenes side by side and print their ground truth, to see what the models see."""
    import numpy as np
    from PIL import Image

    from rlaifv.world.language import describe, true_mentions
    from rlaifv.world.render import IMAGE_SIZE, render
    from rlaifv.world.scenes import sample_scenes

    scenes = sample_scenes(seed, split, n)
    cols = min(n, 8)
    sheet = Image.new("RGB", (cols * (IMAGE_SIZE + 4), ((n + cols - 1) // cols) * (IMAGE_SIZE + 4)), (255, 255, 255))
    for i, s in enumerate(scenes):
        sheet.paste(render(s), ((i % cols) * (IMAGE_SIZE + 4) + 2, (i // cols) * (IMAGE_SIZE + 4) + 2))
    sheet.save(out)
    rng = np.random.default_rng(seed)
    truth = [{"scene_id": s.scene_id, "truth": describe(true_mentions(s), rng)} for s in scenes]
    _emit({"image": str(out), "scenes": truth}, as_json,
          "\n".join(f"{t['scene_id']}: {t['truth']}" for t in truth) + f"\nwrote {out}")


@world_app.command("prompts")
def world_prompts(
    split: str = typer.Option(..., "--split", help="train | prompts | val | test; 'prompts' is the feedback split, "
                              "keep val and test held out"),
    n: int = typer.Option(..., "--n", min=1, help="number of prompts: the first n scenes of the split"),
    out: Path = typer.Option(..., "--out", dir_okay=False,
                             help="FILE.jsonl (PNGs go to FILE_images/ beside it) or FILE.parquet (images inline)"),
    seed: int = SeedOpt,
    preset: str = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Write the world's scenes as a prompt file (id, image, question, ground-truth scene) in the same format as a
    user's prompts, so both are read the same way."""
    from rlaifv.feedback.prompts import write_world_prompts
    from rlaifv.world.scenes import SPLITS

    if split not in SPLITS:
        raise typer.BadParameter(f"{split!r} is not one of {', '.join(SPLITS)}", param_hint="--split")
    if out.suffix not in (".jsonl", ".parquet"):
        raise typer.BadParameter(f"{out} must end in .jsonl or .parquet", param_hint="--out")
    wcfg = _world_config(preset, config, seed)
    path = write_world_prompts(wcfg.seed, split, n, out, wcfg.prior)
    images = path.parent / f"{path.stem}_images" if path.suffix == ".jsonl" else None
    _emit({"path": str(path), "count": n, "split": split, "seed": wcfg.seed, "images": str(images) if images else None},
          as_json, f"wrote {n} {split} prompts to {path}")


@eval_app.command("world")
def eval_world(
    policy: Path = typer.Option(..., "--policy", exists=True, file_okay=False, help="policy model folder"),
    labeler: Optional[Path] = typer.Option(None, "--labeler", exists=True, file_okay=False,
                                           help="labeler model folder; adds its yes/no accuracy"),
    seed: int = SeedOpt,
    split: str = typer.Option("test", "--split", help="'test' for reported numbers, 'val' for model selection"),
    n: int = typer.Option(500, "--n", min=1, help="held-out scenes"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder for generations (resumable); none keeps nothing"),
    as_json: bool = JsonOpt,
) -> None:
    """Exact hallucination metrics of a policy (and a labeler) on held-out scenes of the synthetic world."""
    _quiet_libraries()
    from rlaifv.eval.world import evaluate_labeler, evaluate_policy

    wcfg = WorldConfig(seed=seed)
    ecfg = EvalConfig(split=split, n_scenes=n)  # type: ignore[arg-type]
    result: dict[str, Any] = {"policy": evaluate_policy(policy, wcfg, ecfg, out)}
    if labeler is not None:
        result["labeler"] = evaluate_labeler(labeler, wcfg, ecfg)
    _emit(result, as_json, json.dumps(result, indent=2))


def _register_commands() -> None:
    from rlaifv.cli_feedback import register

    register(app)
    from rlaifv.cli_eval import register as register_eval

    register_eval(eval_app)
    from rlaifv.cli_train import register as register_train

    register_train(app)
    from rlaifv.cli_iterate import register as register_iterate

    register_iterate(app)
    from rlaifv.cli_bon import register as register_bon

    register_bon(app)


_register_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
