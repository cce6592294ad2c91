"""Commands of the built-in synthetic world: `rlaifv demo` and `rlaifv world bootstrap | show | prompts`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rlaifv.cli.common import JsonOpt, emit, exit_on_error, quiet_libraries, world_config, writing

world_app = typer.Typer(help="The synthetic visual world: scenes with exact ground truth and tiny VLMs.",
                        no_args_is_help=True)

SeedOpt = typer.Option(0, "--seed", help="seed of the world: scenes, captions, model init, training order")
PresetOpt = typer.Option("default", "--preset", help="world preset: 'default' (the demo) or 'micro' (seconds, tests)")
ConfigOpt = typer.Option(None, "--config", exists=True, dir_okay=False,
                         help="YAML file with WorldConfig fields; overrides the preset, --seed overrides it")


def register(app: typer.Typer) -> None:
    """Add `demo` and the `world` group to the main app."""
    app.command()(demo)
    app.add_typer(world_app, name="world")


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
                                                   "N = 1, 2, 4, ... up to this (default 8; 0 skips it)"),
    as_json: bool = JsonOpt,
) -> None:
    """Run RLAIF-V end to end on the built-in synthetic world (no download, no GPU): bootstrap, iterative rounds of
    feedback and DPO, evaluation; writes report.md/.json. Rerun after a crash to continue."""
    quiet_libraries()
    from rlaifv.config import EvalConfig
    from rlaifv.pipelines.demo import run_demo

    given = {"rounds": rounds, "bon_samples": bon_samples}
    extra = {k: v for k, v in given.items() if v is not None}
    wcfg = world_config(preset, config, seed)
    with writing(workdir), exit_on_error():
        report = run_demo(workdir, seed, wcfg, EvalConfig(n_scenes=n_test), **extra)
    lines = [f"base policy: CHAIRs {r['chair_s']:.3f}, CHAIRi {r['chair_i']:.3f}, Cover {r['cover']:.3f}"
             if r["round"] == 0 else
             f"round {r['round']}: CHAIRs {r['chair_s']:.3f}, CHAIRi {r['chair_i']:.3f}, Cover {r['cover']:.3f} "
             f"({r['n_pairs']} pairs, feedback precision {_fraction(r['feedback_precision'])})"
             for r in report["rounds"]]
    lines += [f"best-of-{r['n']} ({r['reward']} reward): CHAIRs {r['chair_s']:.3f}, Cover {r['cover']:.3f}, "
              f"{r['mean_len']:.1f} words" for r in report.get("bon", []) if r["n"] in (1, 8)]
    lab = report["labeler"]
    lines.append(f"labeler accuracy {lab['accuracy']:.3f}, false rejections {lab['false_rejection_rate']:.4f}")
    emit(report, as_json, "\n".join(lines))


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
    """Train the world's base policy (hallucinates), labeler (accurate) and claim splitter, or reuse the cached
    ones."""
    quiet_libraries()
    from rlaifv.world.bootstrap import bootstrap

    models = bootstrap(world_config(preset, config, seed), force=force)
    out = {"policy": str(models.policy), "labeler": str(models.labeler), "splitter": str(models.splitter),
           "key": models.manifest["key"], "seconds": models.manifest["seconds"], "train": models.manifest["train"]}
    emit(out, as_json, f"policy: {models.policy}\nlabeler: {models.labeler}\nsplitter: {models.splitter}")


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
    emit({"image": str(out), "scenes": truth}, as_json,
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
    from rlaifv.prompts import write_world_prompts
    from rlaifv.world.scenes import SPLITS

    if split not in SPLITS:
        raise typer.BadParameter(f"{split!r} is not one of {', '.join(SPLITS)}", param_hint="--split")
    if out.suffix not in (".jsonl", ".parquet"):
        raise typer.BadParameter(f"{out} must end in .jsonl or .parquet", param_hint="--out")
    wcfg = world_config(preset, config, seed)
    path = write_world_prompts(wcfg.seed, split, n, out, wcfg.prior)
    images = path.parent / f"{path.stem}_images" if path.suffix == ".jsonl" else None
    emit({"path": str(path), "count": n, "split": split, "seed": wcfg.seed, "images": str(images) if images else None},
          as_json, f"wrote {n} {split} prompts to {path}")
