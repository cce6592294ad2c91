"""Command line of training: `rlaifv train` (DPO of any HF VLM on preference pairs).

    rlaifv train --pairs feedback/ --policy my-vlm/ --out runs/r1            # a collect folder, reference = policy
    rlaifv train --pairs pairs.parquet --policy my-vlm/ --out runs/r1 --lora --bf16 --device cuda
    accelerate launch --config_file configs/accelerate/ddp.yaml -m rlaifv.cli train --pairs ... --out ...

Rerun the same command after a crash and it resumes from the newest checkpoint. The defaults are the paper's
(`rlaifv.config.PAPER`); `--dry-run` checks the config and the policy's config.json and prints the DPO steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from rlaifv.cli.common import (
    DryRunOpt,
    ForceConfigOpt,
    JsonOpt,
    deepspeed_logs_to_stderr,
    dry_run_result,
    emit,
    exit_on_error,
    fail,
    load_config,
    quiet_libraries,
)
from rlaifv.config import DPOConfig


def register(app: typer.Typer) -> None:
    """Add `train` to the main app."""

    @app.command()
    def train(
        pairs: Path = typer.Option(..., "--pairs", exists=True,
                                   help="preference pairs: a collect folder or pair store, or a Parquet / JSONL "
                                        "file or saved `datasets` folder in TRL's VLM format or the "
                                        "RLAIF-V-Dataset columns"),
        policy: str = typer.Option(..., "--policy", help="the VLM to train: folder or hub id"),
        out: Optional[Path] = typer.Option(None, "--out", file_okay=False,
                                           help="folder for checkpoints, metrics.csv and the final model "
                                                "(default: output_dir of the config)"),
        reference: Optional[str] = typer.Option(None, "--reference",
                                                help="reference model folder or hub id (default: the policy); with "
                                                     "--reference-url, the name the server serves it under"),
        reference_url: Optional[list[str]] = typer.Option(
            None, "--reference-url", help="OpenAI-compatible base URL of a vLLM server with the reference model "
                                          "(repeatable): its log-probs come from the server's prompt logprobs"),
        api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env",
                                        help="name of the env variable with the reference server's API key"),
        config: Optional[Path] = typer.Option(None, "--config", exists=True, dir_okay=False,
                                              help="YAML with DPOConfig fields; the options below override it"),
        beta: Optional[float] = typer.Option(None, "--beta", help="DPO beta (default 0.1)"),
        lr: Optional[float] = typer.Option(None, "--lr", help="peak learning rate (default 5e-7, 1e-5 with --lora)"),
        epochs: Optional[float] = typer.Option(None, "--epochs", help="passes over the pairs (default 4)"),
        max_steps: Optional[int] = typer.Option(None, "--max-steps", help="optimizer steps; overrides --epochs"),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="pairs per forward per process "
                                                                                    "(default 8)"),
        grad_accum: Optional[int] = typer.Option(None, "--grad-accum", min=1, help="forwards per optimizer step "
                                                                                   "(default 1)"),
        lora: Optional[bool] = typer.Option(None, "--lora/--full", help="train LoRA adapters (merged when saved) "
                                                                        "or the full model (default full)"),
        bf16: Optional[bool] = typer.Option(None, "--bf16/--fp32", help="bf16 mixed precision (GPUs) or fp32"),
        gradient_checkpointing: Optional[bool] = typer.Option(
            None, "--gradient-checkpointing/--no-gradient-checkpointing",
            help="recompute activations: less memory, more time"),
        device: Optional[str] = typer.Option(None, "--device", help="cpu forces the CPU; otherwise accelerate "
                                                                    "picks (a GPU when there is one)"),
        seed: Optional[int] = typer.Option(None, "--seed", help="seeds LoRA init and data order (default 0)"),
        reference_only: bool = typer.Option(False, "--reference-only",
                                            help="only compute the reference log-probs (and quarantine bad pairs)"),
        train_split: Optional[Path] = typer.Option(None, "--train-split", exists=True, dir_okay=False, hidden=True,
                                                   help="a split.json of `rlaifv iterate`: train only on its "
                                                        "`train` pairs"),
        reference_store: Optional[Path] = typer.Option(None, "--reference-store", file_okay=False, hidden=True,
                                                       help="folder of the reference log-probs (default: beside "
                                                            "the pairs)"),
        as_json: bool = JsonOpt,
        dry_run: bool = DryRunOpt,
        force_config: bool = ForceConfigOpt,
    ) -> None:
        """DPO of a VLM on preference pairs: reference log-probs computed once and stored beside the pairs, one
        packed sequence per pair, checkpoints every save_steps, resumable; writes OUT/model and OUT/summary.json.
        A rerun into OUT with other pairs, models or settings is refused (see --force-config)."""
        cfg = _config(config, out, needs_out=not reference_only, beta=beta, learning_rate=lr, num_train_epochs=epochs,
                      max_steps=max_steps,
                      per_device_train_batch_size=batch_size, gradient_accumulation_steps=grad_accum,
                      use_peft=lora, bf16=bf16, gradient_checkpointing=gradient_checkpointing, seed=seed,
                      use_cpu=True if device == "cpu" else None)
        ref = reference
        if reference_url:
            from rlaifv.config import OpenAIEngineConfig

            if not reference:
                raise typer.BadParameter("--reference-url needs --reference: the model name the server serves")
            ref = OpenAIEngineConfig(urls=reference_url, model=reference, api_key_env=api_key_env)
        if dry_run:
            dry_run_result(lambda: _plan(cfg, pairs, policy, ref), as_json)
            return
        quiet_libraries()
        deepspeed_logs_to_stderr()
        with exit_on_error("; `rlaifv train` needs accelerate (and peft for --lora): pip install 'rlaifv[train]'"):
            source = _training_pairs(pairs, train_split)
            if reference_only:
                from rlaifv.logps.reference import compute_reference_logps

                result = compute_reference_logps(source, ref or policy, cfg, reference_store, device=device)
                emit(result, as_json, f"reference log-probs: {result}")
                return
            from accelerate import PartialState

            from rlaifv.train.dpo import train_dpo

            summary = train_dpo(source, policy, out, cfg, ref, ref_store_dir=reference_store,
                                force_config=force_config)
        # cpu as the run had it: a rerun of a finished run makes no Accelerator, and without it PartialState on a
        # CPU-only machine would take every launched process for the main one (each printing the summary)
        if PartialState(cpu=cfg.use_cpu).is_main_process:
            final = summary.get("final") or {}
            emit(summary, as_json, f"trained {summary['steps']} steps on {summary['n_train']} pairs "
                                   f"(quarantined {summary['quarantined'] or 'none'}); final loss "
                                   f"{final.get('loss', float('nan')):.4f}, reward accuracy "
                                   f"{final.get('rewards/accuracies', float('nan')):.3f}\nmodel: {summary['model']}")


def _training_pairs(pairs: Path, split: Optional[Path]) -> Any:
    """The pairs source, or with a split file of `rlaifv iterate` only its training pairs, in source order (what the
    round trains on in its own process)."""
    if split is None:
        return pairs
    import json

    from rlaifv.preferences import LoadedPairs, load_pairs

    loaded = load_pairs(pairs)
    keys = set(json.loads(split.read_text(encoding="utf-8"))["train"])
    return LoadedPairs(loaded.source, [e for e in loaded.examples if e.key in keys], loaded.bad)


def _plan(cfg: DPOConfig, pairs: Path, policy: str, reference: Any) -> dict[str, Any]:
    """The dry run: the policy's (and a local reference's) config, the pair rows, the optimizer steps."""
    import os

    from rlaifv.cli.plan import check_engine, check_model, dpo_work, plan
    from rlaifv.config import EngineConfig
    from rlaifv.preferences import pair_store_root
    from rlaifv.prompts import count_prompt_rows

    models = check_model("--policy", policy)
    if isinstance(reference, EngineConfig):
        models += check_engine("--reference", reference)
    elif reference:
        models += check_model("--reference", reference)
    root = pair_store_root(pairs)
    if root is not None:
        from rlaifv.records import Pair
        from rlaifv.store import ShardedStore

        rows = len(ShardedStore(root, Pair))
    else:
        rows = count_prompt_rows(pairs)
    processes = int(os.environ.get("WORLD_SIZE", "1"))  # under `accelerate launch`, every process plans alike
    work = dpo_work(cfg, rows, processes)
    work["pairs_note"] = "rows of the source; bad rows are quarantined when training, so steps may be fewer"
    return plan("train", cfg, world=False, models=models, work=work, warnings=[])


def _config(path: Optional[Path], out: Optional[Path], needs_out: bool = True, **overrides: Any) -> DPOConfig:
    """DPOConfig from the YAML file, then the options that were given; a bad value is a readable error. Training
    needs an output folder; the reference pass alone writes beside the pairs (`needs_out` False)."""
    cfg = load_config(DPOConfig, path, {(name,): value for name, value in overrides.items()})
    if needs_out and out is None and not cfg.output_dir:
        fail("no output folder: pass --out or set output_dir in the config", 2)
    return cfg
