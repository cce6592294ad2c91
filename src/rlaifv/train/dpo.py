"""DPO for any Hugging Face VLM, on accelerate: sigmoid loss on stored reference log-probs, one packed row per pair.

A run, top to bottom (`DPOTrainer.run`):

1. the reference pass (logps.reference): the reference model's log-probs of every pair, stored beside the pairs
   and reused by every later run, epoch and process; pairs that cannot train are quarantined there with a reason;
2. the policy: dropout off, vision tower frozen, optional LoRA (peft), optional gradient checkpointing;
3. the steps: each global batch is a fixed slice of a per-epoch seeded permutation, split over processes and
   accumulation steps, so 1 process x batch 8, 2 processes x batch 4 and batch 1 x accumulation 8 see the same pairs
   and follow the same loss curve; a batch's log-probs come from one packed row per pair (logps.packed); with
   `stop_fraction` < 1 the run stops that far into its schedule, each step it runs the same as in the whole one;
4. every `save_steps`: a checkpoint (accelerate state + a model transformers loads), written under a temporary name
   with a manifest of its files' sha256 (`manifest.json`) and renamed when complete; a rerun of the same command
   resumes from the newest one, and its losses, metrics and final model equal an uninterrupted run's;
5. the end: the model (LoRA merged) with its processor in OUT/model (with its own manifest), `summary.json`.

Checkpoints are checked against their manifests (once per process) before they are resumed from or published, and
when a finished run is asked for again. A corrupt one is moved to OUT/checkpoints/corrupt/ with a log line, the
checkpoints after it are dropped, and the run continues from the one before it (or from the start), so it
recomputes them exactly. The main process holds OUT (rlaifv.lock): a second run into it is refused.

Metrics go to OUT/metrics.csv always, and to TensorBoard through accelerate's tracker when it is installed.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from contextlib import closing, nullcontext
from pathlib import Path
from typing import Any

import torch
import yaml

from rlaifv.config import DPOConfig, EngineConfig
from rlaifv.engines.fastpath import report
from rlaifv.engines.transfer import OneBehind, to_host_later
from rlaifv.files import (
    CorruptFile,
    atomic_write,
    building,
    crash_point,
    move_aside,
    publish_dir,
    read_manifest,
    verify_tree,
    write_json,
    write_manifest,
)
from rlaifv.lock import hold
from rlaifv.logps.encode import EncodedPair, PairEncoder, ahead
from rlaifv.logps.packed import response_logps
from rlaifv.logps.reference import (
    compute_reference_logps,
    encode_batch,
    length_limit,
    load_model,
    read_reference,
    reference_store,
)
from rlaifv.preferences import LoadedPairs, load_pairs
from rlaifv.progress import log, progress
from rlaifv.store import bind_config, config_changes, free_paths
from rlaifv.train.accelerator import build_accelerator
from rlaifv.train.loss import METRIC_NAMES, dpo_objective
from rlaifv.train.policy_model import merged_lora_model, optimizer_of, prepare_policy, retie
from rlaifv.train.schedule import Schedule

CHECKPOINTS, MODEL, ADAPTER = "checkpoints", "model", "adapter"
METRICS, SUMMARY, RUN = "metrics.csv", "summary.json", "run.yaml"
TRAINER_STATE = "trainer_state.json"

Callback = Callable[[int, dict[str, float]], None]


# -- the run -------------------------------------------------------------------------------------------------------


class DPOTrainer:
    """One DPO run into `out_dir`; `run()` does everything, resuming from the newest checkpoint if there is one."""

    def __init__(self, pairs: Path | LoadedPairs, policy: str | Path, out_dir: Path, cfg: DPOConfig,
                 reference: str | Path | EngineConfig | None = None, ref_store_dir: Path | None = None,
                 callback: Callback | None = None, force_config: bool = False) -> None:
        self.loaded = pairs if isinstance(pairs, LoadedPairs) else load_pairs(Path(pairs))
        self.policy = str(policy)
        self.reference = reference if isinstance(reference, EngineConfig) else str(reference or policy)
        self.out, self.cfg = Path(out_dir), cfg
        self.ref_store_dir, self.callback, self.force_config = ref_store_dir, callback, force_config
        # what a rerun into out_dir must match (OUT/run.yaml); DPOConfig.FREE_ON_RESUME may differ
        self.run_record = {"pairs": _where(self.loaded.source), "policy": _where(self.policy),
                           "reference": _where(self.reference), "config": cfg.model_dump(mode="json")}
        self.free = {f"config.{path}" for path in free_paths(cfg)}

    def run(self) -> dict[str, Any]:
        # Only the main process writes OUT, so only it holds it; the launcher sets RANK in every process it starts,
        # and this runs before accelerate is set up.
        holding = hold(self.out) if os.environ.get("RANK", "0") == "0" else nullcontext()
        with holding:
            finished = self._finished()
            if finished is not None:
                log(f"{self.out}: already trained with this config; nothing to do")
                return finished
            start_time = time.perf_counter()
            self._setup_accelerator()
            self._setup_reference()
            self._setup_policy()
            start = self._resume()
            self._train(start)
            summary = self._finish(start, time.perf_counter() - start_time)
            self.acc.end_training()
            return summary

    # -- setup -----------------------------------------------------------------------------------------------------

    def _finished(self) -> dict[str, Any] | None:
        saved = self._saved_record()
        if (self.out / SUMMARY).is_file() and saved is not None and not config_changes(saved, self.run_record,
                                                                                        self.free):
            published = [self.out / name for name in (MODEL, ADAPTER) if (self.out / name).is_dir()]
            for folder in [*self.checkpoints(), *published]:
                problem = _problem(folder)
                if problem is not None:  # the run goes on: resuming sets it aside and recomputes it
                    log(f"[yellow]{problem}")
                    return None
            return json.loads((self.out / SUMMARY).read_text(encoding="utf-8"))
        return None

    def _saved_record(self) -> dict[str, Any] | None:
        path = self.out / RUN
        return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None

    def _setup_accelerator(self) -> None:
        from accelerate.utils import ProjectConfiguration

        trackers = self._trackers()
        self.acc = build_accelerator(
            cpu=self.cfg.use_cpu,
            gradient_accumulation_steps=self.cfg.gradient_accumulation_steps,
            mixed_precision="bf16" if self.cfg.bf16 else "no",
            log_with=trackers or None,
            project_config=ProjectConfiguration(project_dir=str(self.out), logging_dir=str(self.out / "runs")),
        )
        self.main = self.acc.is_main_process
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            bind_config(self.out / RUN, self.run_record, self.free, force=self.force_config, where=self.out)
        self.acc.wait_for_everyone()
        if trackers:
            hparams = {k: v for k, v in self.run_record["config"].items() if isinstance(v, int | float | str | bool)}
            self.acc.init_trackers("dpo", config=hparams)

    def _trackers(self) -> list[str]:
        if self.cfg.report_to == "none":
            return []
        installed = importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX")
        if not installed and self.cfg.report_to == "tensorboard":
            raise ValueError("report_to is 'tensorboard' but it is not installed: pip install tensorboard")
        return ["tensorboard"] if installed else []

    def _setup_reference(self) -> None:
        """Reference log-probs on the main process (others wait), then every process reads the finished store."""
        store = reference_store(self.loaded.source, self.reference, self.cfg, self.ref_store_dir)
        if _zero_stage(self.acc) == 3:
            try:  # ZeRO-3 loads models sharded over all processes: the main one cannot run the pass alone
                read_reference(store, self.loaded)
            except ValueError:
                raise ValueError("with DeepSpeed ZeRO-3, compute the reference log-probs first, without the launcher:"
                                 " rlaifv train ... --reference-only") from None
        elif self.main:
            compute_reference_logps(self.loaded, self.reference, self.cfg, store.root, self.acc.device)
        self.acc.wait_for_everyone()
        self.ref_store = store
        self.table = read_reference(store, self.loaded)
        self.examples = [e for e in self.loaded.examples if e.key in self.table.logps]
        if not self.examples:
            raise ValueError(f"no pair can train: all {len(self.table.quarantined)} are quarantined "
                             f"({self.table.reasons()}); see {store.quarantine_dir}")
        if self.main and self.table.quarantined:
            log(f"quarantined {len(self.table.quarantined)} pairs: {self.table.reasons()} ({store.quarantine_dir})")

    def _setup_policy(self) -> None:
        from accelerate.utils import set_seed
        from transformers import get_scheduler

        set_seed(self.cfg.seed)  # LoRA's initial weights
        model, self.processor = load_model(self.policy, self.cfg)
        self.encoder = PairEncoder(self.processor, length_limit(model.config, self.cfg))
        self.pad_id = self.processor.tokenizer.pad_token_id
        model = prepare_policy(model, self.cfg)
        optimizer = optimizer_of(model, self.cfg, self.acc.device)
        self.schedule = Schedule(len(self.examples), self.cfg.per_device_train_batch_size,
                                 self.cfg.gradient_accumulation_steps, self.acc.num_processes, self.cfg.seed)
        self.total_steps = self.schedule.total_steps(self.cfg)  # what warmup and decay span
        self.last_step = self.schedule.run_steps(self.cfg)  # what runs
        if self.acc.state.deepspeed_plugin is not None:  # DeepSpeed reads it from a prepared dataloader otherwise
            self.acc.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = (
                self.cfg.per_device_train_batch_size)
        # Not handed to accelerate.prepare, which would step it once per process: it steps once per optimizer step.
        self.scheduler = get_scheduler(self.cfg.lr_scheduler_type, optimizer,
                                       num_warmup_steps=math.ceil(self.cfg.warmup_ratio * self.total_steps),
                                       num_training_steps=self.total_steps)
        self.model, self.optimizer = self.acc.prepare(model, optimizer)
        self.autocast = nullcontext
        original = self.model.__dict__.pop("_original_forward", None)
        if original is not None:
            # accelerate's mixed precision wraps forward in autocast and upcasts every output to fp32: a full fp32
            # copy of the (B, K, V) logits (and of the vision tower's outputs) at the top of the memory peak, which
            # token_logps does not need (bf16 -> fp32 is exact, so the log-probs are the same). Autocast is applied
            # around the step's forward instead (`_forward`), where it also sets the attention mask's dtype.
            self.model.forward = original
            self.autocast = self.acc.autocast
        self.acc.register_for_checkpointing(self.scheduler)
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    # -- checkpoints -----------------------------------------------------------------------------------------------

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (temporary folders of an interrupted save never match)."""
        root = self.out / CHECKPOINTS
        found = [p for p in root.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[1].isdigit()]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    def _set_aside_corrupt(self) -> None:
        """Move the first corrupt checkpoint aside and drop the ones after it, so the run resumes before it and
        recomputes them all (the same steps give the same checkpoints). A checkpoint of an older version, without a
        manifest, gets one: what it holds now is what later checks compare against."""
        found = self.checkpoints()
        for i, checkpoint in enumerate(found):
            if read_manifest(checkpoint) is None:
                write_manifest(checkpoint)
            problem = _problem(checkpoint)
            if problem is None:
                continue
            where = move_aside(checkpoint, self.out / CHECKPOINTS, problem.why)
            log(f"[yellow]{problem.path} is corrupt ({problem.why}): {checkpoint} moved to {where}; training "
                f"resumes before it and recomputes it")
            for later in found[i + 1:]:
                log(f"[yellow]{later} dropped: it is recomputed after {checkpoint.name}")
                shutil.rmtree(later)
            return

    def _resume(self) -> int:
        """Load the newest sound checkpoint, if any; returns the step to continue from."""
        self.window: dict[str, list[float]] = {}
        if self.main:
            self._set_aside_corrupt()
        self.acc.wait_for_everyone()
        found = self.checkpoints()
        if not found:
            if self.main:
                self._write_metrics_header()
            return 0
        latest = found[-1]
        self.acc.load_state(str(latest / "state"))
        state = json.loads((latest / TRAINER_STATE).read_text(encoding="utf-8"))
        self.window = state["window"]
        if self.main:
            self._truncate_metrics(state["step"])
            log(f"resuming from {latest} (step {state['step']} of {self.last_step})")
        return state["step"]

    def _save_checkpoint(self, step: int) -> None:
        """accelerate state, trainer state and a loadable model under a temporary name, then one rename."""
        root = self.out / CHECKPOINTS
        tmp, final = root / f".checkpoint-{step}.tmp", root / f"checkpoint-{step}"
        if self.main:
            shutil.rmtree(tmp, ignore_errors=True)
            # made before the barrier: every rank writes its RNG state into it, and accelerate creates it on the
            # main process only, so another rank could otherwise write before it exists
            (tmp / "state").mkdir(parents=True)
        self.acc.wait_for_everyone()
        # a save that fails (a full disk) leaves no half checkpoint behind to hold the space a rerun needs
        with building(tmp) if self.main else nullcontext():
            self.acc.save_state(str(tmp / "state"))
            self._export_model(tmp)
            self.acc.wait_for_everyone()  # every rank's files are in before the manifest lists them
            if self.main:
                crash_point("checkpoint.written", final.name)  # state and model written, not yet published
                write_json(tmp / TRAINER_STATE, {"step": step, "window": self.window,
                                                  "total_steps": self.total_steps})
                write_manifest(tmp)  # sha256 of every file, checked before the checkpoint is used
        if self.main:
            publish_dir(tmp, final)
            if self.cfg.save_total_limit is not None:
                for old in self.checkpoints()[: -self.cfg.save_total_limit]:
                    shutil.rmtree(old)
        self.acc.wait_for_everyone()

    def _export_model(self, folder: Path) -> None:
        """folder/model, which `AutoModelForImageTextToText.from_pretrained` loads unchanged (LoRA merged, processor
        included), and with LoRA the adapter alone in folder/adapter."""
        state = self.acc.get_state_dict(self.model)  # full weights on the main process, gathered if sharded
        if not self.main:
            return
        unwrapped = self.acc.unwrap_model(self.model)
        if self.cfg.use_peft:
            from peft import get_peft_model_state_dict

            lora_state = get_peft_model_state_dict(unwrapped, state_dict=state)
            unwrapped.save_pretrained(folder / ADAPTER, state_dict=lora_state)
            merged = merged_lora_model(self.policy, unwrapped.peft_config["default"], lora_state)
            merged.save_pretrained(folder / MODEL)
        else:
            unwrapped.save_pretrained(folder / MODEL, state_dict=retie(state, unwrapped))
        self.processor.save_pretrained(folder / MODEL)

    # -- training --------------------------------------------------------------------------------------------------

    def _train(self, start: int) -> None:
        bar_cm = progress("DPO steps", self.last_step) if self.main else nullcontext()
        with bar_cm as bar:
            if bar is not None:
                bar.advance(start)
            # Each step's pairs are encoded on a background thread while the device runs the step before, and a
            # step's metrics are read once the next step is queued: reading them waits for the device, which would
            # then idle while the host prepares the next step. A checkpoint waits for its step's metrics first.
            steps = ahead(range(start, self.last_step), self._encode_step, background=self.acc.device.type != "cpu")
            with OneBehind(lambda done, read: self._after_step(done, read, bar)) as behind, closing(steps):
                for step, micro_batches in enumerate(steps, start=start):
                    done = step + 1
                    behind.push((done, self._step(step, micro_batches)))
                    if done % self.cfg.save_steps == 0 or done == self.last_step:
                        behind.flush()
                        self._save_checkpoint(done)

    def _after_step(self, done: int, read: Callable[[], dict[str, float]], bar) -> None:
        """Step `done`'s metrics into the logging window, its metrics row, the progress bar and the callback."""
        metrics = read()
        for name, value in metrics.items():
            total = self.window.setdefault(name, [0.0, 0])
            total[0] += value
            total[1] += 1
        if done % self.cfg.logging_steps == 0 or done == self.last_step:
            self._log_row(done)
        if self.main:
            if bar is not None:
                bar.advance(1, status=f"loss {metrics['loss']:.4f}")
            if self.callback is not None:
                self.callback(done, metrics)
            crash_point("dpo.step", str(done))

    def _encode_step(self, step: int) -> list[list[EncodedPair]]:
        """This process's micro-batches of one step, encoded."""
        def bad(example, reason: str) -> None:  # passed the reference pass, so its input changed since
            raise ValueError(f"pair {example.key} can no longer be read ({reason}); fix it and rerun to resume")

        return [encode_batch(self.encoder, [self.examples[i] for i in micro], bad)
                for micro in self.schedule.micro_batches(step, self.acc.process_index)]

    def _step(self, step: int, micro_batches: list[list[EncodedPair]]) -> Callable[[], dict[str, float]]:
        """One optimizer step over this process's (encoded) micro-batches, queued on the device; returns a function
        that waits for it and gives its metrics, means over the global batch."""
        lr = self.scheduler.get_last_lr()[0]
        per_pair: dict[str, list[torch.Tensor]] = {}
        grad_norm = None
        for encoded in micro_batches:
            with self.acc.accumulate(self.model):
                losses, metrics = self._forward(encoded)
                self.acc.backward(losses.mean())
                if self.acc.sync_gradients:
                    grad_norm = self.acc.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            for name, values in metrics.items():
                per_pair.setdefault(name, []).append(values)
        self.scheduler.step()
        names = list(per_pair)
        values = [self.acc.gather(torch.cat(per_pair[n])).float().mean() for n in names]  # each ()
        if hasattr(grad_norm, "full_tensor"):  # FSDP2 returns a DTensor
            grad_norm = grad_norm.full_tensor()
        if isinstance(grad_norm, torch.Tensor):
            names.append("grad_norm")
            values.append(grad_norm.detach().float().to(values[0].device))
        wait = to_host_later([torch.stack(values)])  # (M,)

        def read() -> dict[str, float]:
            metrics = dict(zip(names, wait()[0].tolist()))
            if "grad_norm" not in metrics:  # DeepSpeed clips inside backward
                metrics["grad_norm"] = float(grad_norm) if grad_norm is not None else math.nan
            return {**metrics, "learning_rate": lr}
        return read

    def _forward(self, encoded: list[EncodedPair]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        stored = [self.table.logps[p.key] for p in encoded]
        if any((r.chosen_tokens, r.rejected_tokens) != (len(p.chosen_ids), len(p.rejected_ids))
               for r, p in zip(stored, encoded)):  # checked on the host: no wait for the device
            raise ValueError("the policy tokenizes responses differently from the reference pass: policy and "
                             "reference must share a tokenizer and chat template")
        ref = self.table.batch([p.key for p in encoded], self.acc.device)
        with self.autocast():
            policy = response_logps(self.model, encoded, self.pad_id)
        return dpo_objective(policy, ref, self.cfg)

    # -- metrics ---------------------------------------------------------------------------------------------------

    def _columns(self) -> list[str]:
        extra = ["nll_loss"] if self.cfg.rpo_alpha else []
        return ["step", "epoch", *METRIC_NAMES, *extra, "grad_norm", "learning_rate"]

    def _write_metrics_header(self) -> None:
        with (self.out / METRICS).open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow(self._columns())

    def _truncate_metrics(self, step: int) -> None:
        """Drop the rows a killed run logged after its last checkpoint; the resumed run writes them again."""
        path = self.out / METRICS
        rows = read_metrics(path) if path.is_file() else []

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, self._columns())
                writer.writeheader()
                writer.writerows(r for r in rows if r["step"] <= step)

        atomic_write(path, write)

    def _log_row(self, step: int) -> None:
        row = {"step": step, "epoch": round(step / self.schedule.steps_per_epoch, 4),
               **{name: total / count for name, (total, count) in self.window.items()}}
        self.window = {}
        if self.main:
            with (self.out / METRICS).open("a", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, self._columns()).writerow(row)
        self.acc.log({k: v for k, v in row.items() if k != "step"}, step=step)

    # -- the end ---------------------------------------------------------------------------------------------------

    def _finish(self, start: int, seconds: float) -> dict[str, Any]:
        checkpoints = self.checkpoints()
        summary = {
            "out_dir": str(self.out),
            "model": str(self.out / MODEL),
            "checkpoints": [str(p / MODEL) for p in checkpoints],
            "metrics": str(self.out / METRICS),
            "reference_store": str(self.ref_store.root),
            "n_pairs": len(self.loaded.examples) + len(self.loaded.bad),
            "n_train": len(self.examples),
            "quarantined": self.table.reasons(),
            "steps": self.last_step,
            "schedule_steps": self.total_steps,
            "epochs": round(self.last_step / self.schedule.steps_per_epoch, 4),
            "global_batch": self.schedule.global_batch,
            "processes": self.acc.num_processes,
            "strategy": self.acc.distributed_type.value,  # NO, MULTI_GPU/MULTI_CPU (DDP), FSDP, DEEPSPEED
            "fast_paths": report(self.model),  # packed log-probs, or the exact path where they differed
            "resumed_from_step": start,
            "final": read_metrics(self.out / METRICS)[-1] if self.main else None,
            "seconds": round(seconds, 2),
        }
        if self.main:
            verify_tree(checkpoints[-1])  # never publish altered weights
            for name in (MODEL, ADAPTER) if self.cfg.use_peft else (MODEL,):
                _publish(checkpoints[-1], name, self.out / name)
            if self.cfg.use_peft:
                summary["adapter"] = str(self.out / ADAPTER)
            write_json(self.out / SUMMARY, summary)
        self.acc.wait_for_everyone()
        return summary


def _publish(checkpoint: Path, name: str, dest: Path) -> None:
    """dest as a copy of the checkpoint's folder `name`, hard-linked where possible (no second copy on disk), with
    the checkpoint's manifest entries of those files as its own manifest."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with building(tmp):
        shutil.copytree(checkpoint / name, tmp, copy_function=_link_or_copy)
        entries = read_manifest(checkpoint) or {}
        prefix = f"{name}/"
        write_manifest(tmp, {rel[len(prefix):]: entry for rel, entry in entries.items() if rel.startswith(prefix)})
    shutil.rmtree(dest, ignore_errors=True)
    publish_dir(tmp, dest)


def _problem(folder: Path) -> CorruptFile | None:
    """The first file of `folder` that differs from its manifest, as a CorruptFile; None when all match."""
    try:
        verify_tree(folder)
    except CorruptFile as exc:
        return exc
    return None


def _where(path: str | Path | EngineConfig) -> str:
    """A local path made absolute (the same run named from another folder is still the same run); hub ids as is;
    a served model as model@URL."""
    if isinstance(path, EngineConfig):
        return path.name
    return str(Path(path).resolve()) if Path(path).exists() else str(path)


def _zero_stage(acc) -> int | None:
    plugin = acc.state.deepspeed_plugin
    return plugin.zero_stage if plugin is not None else None


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a metrics.csv as numbers; a torn last line (a kill mid-write) is skipped."""
    rows = []
    with Path(path).open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                parsed = {k: float(v) for k, v in row.items() if k is not None and v not in (None, "")}
                parsed["step"] = int(parsed["step"])
            except (KeyError, ValueError):
                continue
            rows.append(parsed)
    return rows


def train_dpo(
    pairs: Path | LoadedPairs,
    policy_path: str | Path,
    out_dir: Path | None,
    cfg: DPOConfig,
    reference_path: str | Path | EngineConfig | None = None,
    ref_store_dir: Path | None = None,
    callback: Callback | None = None,
    force_config: bool = False,
) -> dict[str, Any]:
    """Train `policy_path` with DPO on `pairs` into `out_dir` (default cfg.output_dir); returns the run's summary.

    The reference defaults to the policy; an `openai` EngineConfig computes its log-probs on a server. Rerunning
    with the same arguments resumes an interrupted run, or returns the saved summary of a finished one; other pairs,
    models or config (beyond DPOConfig.FREE_ON_RESUME) are refused, unless `force_config` continues the run with them.
    `callback(step, metrics)` runs on the main process for every optimizer step, in order, before that step's
    checkpoint is saved (metrics are the step's means over the global batch). Between checkpoints it runs once the
    next step has been queued (on a CPU: computed), so the device is not kept waiting for it; when that next step
    fails, it still runs for the finished one before the error propagates.
    """
    if not (out_dir or cfg.output_dir):
        raise ValueError("no output folder: pass out_dir or set output_dir in the config")
    out = Path(out_dir or cfg.output_dir)
    return DPOTrainer(pairs, policy_path, out, cfg, reference_path, ref_store_dir, callback, force_config).run()
