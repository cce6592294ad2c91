"""DPO step time and memory: TRL's DPOTrainer vs `rlaifv train`, same VLM, data and batch size, side by side.

    pip install trl==1.16.0        # the benchmark's only extra: pip install -e ".[bench]"
    OMP_NUM_THREADS=1 python benchmarks/dpo_vs_trl.py                 # tiny LLaVA (world shape, random weights), CPU
    python benchmarks/dpo_vs_trl.py --shape llava-7b --device cuda --lora --bf16 --response-words 150
    python benchmarks/dpo_vs_trl.py --shape llava-7b-mini --lora --bf16 --response-words 150 --steps 5   # CPU

Both trainers start from the same saved model (random weights) and read the same TRL-format Parquet file of world
images with a true and a noisy description. Each side runs in its own subprocess, so its peak memory is its own:

- TRL: `DPOTrainer` with an explicit reference model (full fine-tuning) or the adapter-disabled policy (LoRA); it
  encodes the image twice per pair (chosen and rejected rows) and runs the reference forward every step;
- rlaifv: the reference pass once (timed separately), then one packed row per pair and no reference model.

`llava-7b-mini` keeps LLaVA-1.5-7B's token geometry (576 image tokens from a 336 px image, 32k vocabulary, head
size 128) with a 2-layer 1024-wide language model and a small vision tower: the 7B shape's memory terms, per layer,
at a size a CPU steps through in seconds. With --lora both sides get the same LoRA dropout (`--lora-dropout`, default
0.05 as `rlaifv train`): TRL's `disable_dropout` would otherwise zero it after wrapping the model, so TRL ran without
it while rlaifv ran with it (the models' own dropouts are 0 in both shapes).

Reported: the loss at step 0 (log 2 = 0.693147 for both, policy = reference), the median step time after two
warm-up steps, and our step time plus the reference pass's share per step -- its compute time (encoding and
forwards, without loading the model) / (epochs x steps per epoch) -- for the benchmark's `--pairs`, and for a
realistic `--realistic-pairs` (10k), both over `--epochs` epochs (the paper: 4). The realistic pass is this whole
pass (load, warm-up, store and all) plus the other pairs at the pace of the batches after the first. The reference
model's load time is printed on its own, and for the record the benchmark-data share with the whole pass counted.
Peak memory:
GPU: torch's peak allocated; CPU: peak RSS of the process, and above its RSS after imports.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

LOG2 = math.log(2)


# -- the shared model and data -------------------------------------------------------------------------------------


def save_model(shape: str, device: str, out: Path) -> Path:
    """A random-weight VLM and its processor in `out`: the world's tiny LLaVA, or LLaVA-1.5-7B's shape (bf16)."""
    if shape in ("llava-7b", "llava-7b-mini"):
        sys.path.insert(0, str(Path(__file__).parent))
        from feedback_speed import llava_7b_model

        model, processor = llava_7b_model(device if shape == "llava-7b" else "cpu", mini=shape == "llava-7b-mini")
    else:
        from rlaifv.world.config import TinyVLMConfig
        from rlaifv.world.models import build_model, build_processor, build_tokenizer

        cfg = TinyVLMConfig()
        tokenizer = build_tokenizer(0)
        model, processor = build_model(tokenizer, cfg, seed=0), build_processor(tokenizer, cfg)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def save_pairs(n: int, image_size: int, response_words: int, out: Path) -> Path:
    """n world scenes as TRL vision preference rows: the true description chosen, the captioner's noisy one
    rejected, each repeated up to `response_words` words (0: as they come, ~10-40 words)."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rlaifv.feedback.export import TRL_SCHEMA
    from rlaifv.world.language import describe, noisy_caption, true_mentions
    from rlaifv.world.render import render
    from rlaifv.world.scenes import sample_scenes

    def stretch(text: str) -> str:
        words = text.split()
        return " ".join((words * math.ceil(response_words / len(words)))[:response_words]) if response_words else text

    rng = np.random.default_rng(0)
    rows = []
    for scene in sample_scenes(0, "prompts", n):
        buf = io.BytesIO()
        render(scene).resize((image_size, image_size)).save(buf, format="PNG")
        chosen, rejected = stretch(describe(true_mentions(scene), rng)), stretch(noisy_caption(scene, rng))
        if chosen == rejected:
            rejected = stretch(noisy_caption(scene, rng) + " There is a kite.")

        def turn(role: str, content: list) -> list:
            return [{"role": role, "content": content}]

        rows.append({
            "images": [{"bytes": buf.getvalue(), "path": None}],
            "prompt": turn("user", [{"type": "image", "text": None},
                                    {"type": "text", "text": "Describe this image in detail."}]),
            "chosen": turn("assistant", [{"type": "text", "text": chosen}]),
            "rejected": turn("assistant", [{"type": "text", "text": rejected}]),
        })
    pq.write_table(pa.Table.from_pylist(rows, schema=TRL_SCHEMA), out)
    return out


# -- measuring -----------------------------------------------------------------------------------------------------


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class StepClock:
    """Timestamps after every optimizer step (device-synchronized): step times are their differences."""

    def __init__(self, device: str) -> None:
        self.device, self.stamps = device, [time.perf_counter()]

    def tick(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())

    def median_step(self, timed: int, warmup: int = 2) -> float:
        """Median of the first `timed` steps' times, the first `warmup` left out."""
        stamps = self.stamps[: timed + 1]
        steps = [b - a for a, b in zip(stamps, stamps[1:])]
        return statistics.median(steps[warmup:] if len(steps) > warmup + 1 else steps)


def memory(device: str, rss_start: float) -> dict:
    if device.startswith("cuda"):
        return {"peak_gb": torch.cuda.max_memory_allocated() / 2**30}
    return {"peak_rss_mb": peak_rss_mb(), "peak_above_start_mb": peak_rss_mb() - rss_start}


PROFILED_STEPS = 2  # steps after the timed ones that --profile records (not in the medians)


class StepProfiler:
    """torch.profiler over the PROFILED_STEPS steps after the timed ones; writes the kernel table of one side.

    The window runs from one step callback to the one PROFILED_STEPS later. Our trainer calls back once the next
    step is queued, so there it holds the end of one step and the whole of the next: compare the busy shares, not
    the walls, across sides.

    The summary compares the profiled steps' wall time with the GPU's busy time (kernels only): the difference is
    time the GPU waited on the host (encoding, Python, synchronizations).
    """

    def __init__(self, folder: Path | None, side: str) -> None:
        self.folder, self.side, self.prof, self.began = folder, side, None, 0.0
        self.host: dict[str, float] = {}  # named host-side work inside the profiled steps, seconds

    def start(self) -> None:
        if self.folder is None:
            return
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        self.prof = profile(activities=activities)
        self.prof.start()
        self.began = time.perf_counter()

    def timed(self, name: str, fn):
        """fn, with the wall time of its calls inside the profiled steps added up under `name`."""
        def wrapper(*args, **kwargs):
            began = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if self.prof is not None:
                    self.host[name] = self.host.get(name, 0.0) + time.perf_counter() - began
        return wrapper

    def stop(self) -> None:
        if self.prof is None:
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = time.perf_counter() - self.began
        self.prof.stop()
        events = self.prof.key_averages()

        def device_us(e) -> float:
            return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)

        kernels = [e for e in events if device_us(e) > 0 and not e.key.startswith(("aten::", "cuda", "Memcpy",
                                                                                      "Memset"))]
        busy = sum(device_us(e) for e in kernels) / 1e6
        groups: dict[str, float] = {}
        for e in kernels:
            name = e.key.lower()
            group = ("attention" if any(k in name for k in ("fmha", "flash", "attention", "attn")) else
                     "matmul" if any(k in name for k in ("gemm", "nvjet", "xmma", "sm90", "cublas", "cutlass")) else
                     "other")
            groups[group] = groups.get(group, 0.0) + device_us(e) / 1e6
        lines = [f"{self.side}: profiled {PROFILED_STEPS} step callbacks, wall {wall:.3f} s, GPU kernels busy "
                 f"{busy:.3f} s ({busy / wall:.0%}); " + ", ".join(f"{k} {v:.3f} s" for k, v in sorted(groups.items()))
                 + "".join(f"; host {k} {v:.3f} s" for k, v in self.host.items())]
        for key in ("self_device_time_total", "self_cuda_time_total"):
            try:
                lines.append(events.table(sort_by=key, row_limit=40, max_name_column_width=100))
                break
            except (AttributeError, KeyError, ValueError):
                continue
        lines.append(events.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=100))
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.side == "ours":  # the timeline, to see where the GPU waits (chrome://tracing or Perfetto)
            import gzip
            import shutil

            raw = self.folder / f"{self.side}_trace.json"
            self.prof.export_chrome_trace(str(raw))
            with raw.open("rb") as f, gzip.open(f"{raw}.gz", "wb", compresslevel=6) as g:
                shutil.copyfileobj(f, g)
            raw.unlink()
        (self.folder / f"{self.side}_profile.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(lines[0], file=sys.stderr)
        self.prof = None


# -- the two sides (each in its own process) -----------------------------------------------------------------------


class StepsDone(Exception):
    """Raised from the step callback after the last timed step."""


def run_ours(args, model_dir: Path, data: Path, work: Path, rss_start: float) -> dict:
    from rlaifv.config import DPOConfig
    from rlaifv.logps.reference import compute_reference_logps
    from rlaifv.preferences import load_pairs
    from rlaifv.train.dpo import read_metrics, train_dpo

    last = args.steps + (PROFILED_STEPS if args.profile else 0)
    cfg = DPOConfig(per_device_train_batch_size=args.batch, max_steps=last, logging_steps=1,
                    save_steps=last, learning_rate=args.lr, warmup_ratio=0.0, bf16=args.bf16,
                    gradient_checkpointing=args.gradient_checkpointing, use_cpu=args.device == "cpu",
                    use_peft=args.lora, report_to="none",
                    **({"lora_r": 64, "lora_alpha": 16, "lora_dropout": args.lora_dropout} if args.lora else {}))
    loaded = load_pairs(data)
    start, timings = time.perf_counter(), {}
    ref_store = work / f"{args.tag}-reference"  # each run of our side computes its own
    compute_reference_logps(loaded, model_dir, cfg, ref_store, device=args.device, timings=timings)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    reference_s = time.perf_counter() - start
    clock, profiler = StepClock(args.device), StepProfiler(args.profile, args.tag)
    import rlaifv.train.dpo as dpo

    dpo.encode_batch = profiler.timed("encode_batch", dpo.encode_batch)

    def tick(step: int, metrics: dict) -> None:
        clock.tick()
        if step == args.steps:
            profiler.start()
        if step == last:  # skip the final checkpoint and export, which TRL is not asked for
            profiler.stop()
            raise StepsDone

    try:
        train_dpo(loaded, model_dir, work / args.tag, cfg, ref_store_dir=ref_store, callback=tick)
    except StepsDone:
        pass
    rows = read_metrics(work / args.tag / "metrics.csv")
    step = clock.median_step(timed=args.steps)
    # The first batch carries the warm-up (kernels, allocator); a long pass runs at the later batches' pace.
    (first_pairs, first_s), later = timings["batches"][0], timings["batches"][1:]
    per_pair = statistics.median(s / n for n, s in later) if later else first_s / first_pairs
    realistic_s = reference_s + per_pair * (args.realistic_pairs - args.pairs)  # all of the pass, load included

    def share(pairs: int, seconds: float) -> float:  # reference seconds per training step
        return seconds / (args.epochs * math.ceil(pairs / args.batch))

    return {"loss_step0": rows[0]["loss"], "step_s": step, "reference_pass_s": reference_s,
            "reference_load_s": timings["load_s"], "reference_compute_s": timings["compute_s"],
            "reference_first_batch_s": first_s, "reference_per_pair_s": per_pair,
            "step_amortized_s": step + share(args.pairs, timings["compute_s"]),
            "step_amortized_with_load_s": step + share(args.pairs, reference_s),
            "step_amortized_realistic_s": step + share(args.realistic_pairs, realistic_s),
            **memory(args.device, rss_start)}


def run_trl(args, model_dir: Path, data: Path, work: Path, rss_start: float) -> dict:
    import datasets
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    dtype = torch.bfloat16 if args.bf16 and args.lora else torch.float32  # as rlaifv loads it
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype).to(args.device)
    peft_config, ref_model = None, None
    if args.lora:
        from peft import LoraConfig

        from rlaifv.train.policy_model import lora_targets

        peft_config = LoraConfig(r=64, lora_alpha=16, lora_dropout=args.lora_dropout,
                                 target_modules=lora_targets(model, True))
    else:  # TRL would otherwise reload the reference from the hub name (STACK_NOTES)
        ref_model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype).to(args.device)
    last = args.steps + (PROFILED_STEPS if args.profile else 0)
    config = DPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=args.batch, max_steps=last,
                       logging_steps=1, save_strategy="no", learning_rate=args.lr, lr_scheduler_type="cosine",
                       bf16=args.bf16, gradient_checkpointing=args.gradient_checkpointing,
                       use_cpu=args.device == "cpu", max_length=None, report_to="none",
                       # disable_dropout zeroes every nn.Dropout after the LoRA wrap, LoRA's too; the models' own
                       # dropouts are 0, so leaving it off keeps exactly the LoRA dropout rlaifv uses
                       disable_dropout=not (args.lora and args.lora_dropout > 0),
                       dataloader_num_workers=0, seed=0)
    dataset = datasets.load_dataset("parquet", data_files=str(data), split="train")
    clock, profiler = StepClock(args.device), StepProfiler(args.profile, "trl")

    class Tick(TrainerCallback):
        def on_step_end(self, _args, state, *_, **__):
            clock.tick()
            if state.global_step == args.steps:
                profiler.start()
            if state.global_step == last:
                profiler.stop()

    trainer = DPOTrainer(model=model, ref_model=ref_model, args=config, train_dataset=dataset,
                         processing_class=processor, peft_config=peft_config, callbacks=[Tick()])
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    clock.stamps = [time.perf_counter()]
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"loss_step0": losses[0], "step_s": clock.median_step(timed=args.steps), **memory(args.device, rss_start)}


# -- driver --------------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=("tiny", "llava-7b", "llava-7b-mini"), default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--pairs", type=int, default=32, help="pairs in the data set")
    ap.add_argument("--batch", type=int, default=4, help="pairs per step, both trainers")
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps timed (the first two are warm-up)")
    ap.add_argument("--epochs", type=int, default=4, help="epochs the reference pass is amortized over (paper: 4)")
    ap.add_argument("--realistic-pairs", type=int, default=10_000,
                    help="data set size of the second amortized figure (reference compute per pair measured here)")
    ap.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout, both trainers")
    ap.add_argument("--response-words", type=int, default=0, help="stretch responses to this many words (0: as is)")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--lora", action="store_true", help="LoRA r 64 / alpha 16 on the LM's linear layers")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is steadiest on a shared machine)")
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help=f"profile {PROFILED_STEPS} more steps per side (not timed) and write the kernel tables here")
    ap.add_argument("--baseline-src", type=Path, metavar="SRC",
                    help="also run our side from another checkout's src/ (e.g. the previous commit's), same data")
    ap.add_argument("--side", choices=("ours", "trl"), help=argparse.SUPPRESS)
    ap.add_argument("--tag", default="ours", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.shape == "llava-7b" and not args.lora and args.device.startswith("cuda"):
        print("note: full fine-tuning of a 7B model with AdamW needs ~112 GB; add --lora for one GPU",
              file=sys.stderr)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    if args.side:  # one side, in a fresh process: print its numbers as JSON
        rss_start = rss_mb()
        run = run_ours if args.side == "ours" else run_trl
        result = run(args, args.workdir / "model", args.workdir / "pairs.parquet", args.workdir, rss_start)
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory(prefix="dpo-vs-trl-") as tmp:
        work = Path(tmp)
        save_model(args.shape, args.device, work / "model")
        if args.device.startswith("cuda"):  # hand the saved model's GPU memory back before the two sides start
            import gc

            gc.collect()
            torch.cuda.empty_cache()
        save_pairs(args.pairs, 96 if args.shape == "tiny" else 336, args.response_words, work / "pairs.parquet")
        results = {}
        sides = [("trl", "trl", None), ("ours", "ours", None)]
        if args.baseline_src:
            sides.append(("baseline", "ours", args.baseline_src.resolve()))
        for tag, side, src in sides:
            cmd = [sys.executable, __file__, *sys.argv[1:], "--side", side, "--tag", tag, "--workdir", str(work)]
            env = dict(os.environ)
            if src is not None:  # that checkout's rlaifv first on the path
                env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                sys.exit(f"{tag} failed:\n{done.stderr[-4000:]}")
            results[tag] = json.loads(done.stdout.strip().splitlines()[-1])
    report(args, results)


def report(args, results: dict) -> None:
    trl, ours = results["trl"], results["ours"]
    mem_key = "peak_gb" if args.device.startswith("cuda") else "peak_above_start_mb"
    unit = "GB" if mem_key == "peak_gb" else "MB above start"
    print(f"shape {args.shape}, device {args.device}, torch {torch.__version__}, threads {args.threads}, "
          f"{args.pairs} pairs, batch {args.batch}, {args.steps} steps, lora {args.lora}"
          f"{f' (dropout {args.lora_dropout})' if args.lora else ''}, bf16 {args.bf16}, "
          f"gradient checkpointing {args.gradient_checkpointing}, response words {args.response_words or 'as is'}")
    bench, real = f"{args.pairs} pairs x {args.epochs} epochs", f"{args.realistic_pairs} pairs x {args.epochs} epochs"
    print(f"| trainer | loss at step 0 | step s | step s + reference compute share, {bench} | "
          f"step s + reference share, {real} | peak memory ({unit}) |\n|---|---|---|---|---|---|")
    print(f"| TRL DPOTrainer (reference forward in every step) | {trl['loss_step0']:.6f} | {trl['step_s']:.4f} | "
          f"{trl['step_s']:.4f} | {trl['step_s']:.4f} | {trl[mem_key]:.1f} |")
    for tag, name in (("ours", "rlaifv train"), ("baseline", f"rlaifv train from {args.baseline_src}")):
        if tag in results:
            r = results[tag]
            print(f"| {name} | {r['loss_step0']:.6f} | {r['step_s']:.4f} | {r['step_amortized_s']:.4f} | "
                  f"{r['step_amortized_realistic_s']:.4f} | {r[mem_key]:.1f} |")
    print(f"speed-up {trl['step_s'] / ours['step_s']:.2f}x per step; with the reference pass's compute amortized "
          f"{trl['step_s'] / ours['step_amortized_s']:.2f}x ({bench}), "
          f"{trl['step_s'] / ours['step_amortized_realistic_s']:.2f}x ({real}); memory "
          f"{ours[mem_key] / trl[mem_key]:.0%} of TRL's; |loss0 - log 2|: TRL {abs(trl['loss_step0'] - LOG2):.1e}, "
          f"ours {abs(ours['loss_step0'] - LOG2):.1e}")
    print(f"reference pass: {ours['reference_compute_s']:.2f} s compute for {args.pairs} pairs "
          f"({1000 * ours['reference_compute_s'] / args.pairs:.1f} ms per pair; first batch "
          f"{ours['reference_first_batch_s']:.2f} s, then {1000 * ours['reference_per_pair_s']:.1f} ms per pair) + "
          f"{ours['reference_load_s']:.2f} s loading the model ({ours['reference_pass_s']:.2f} s wall in all, once "
          f"per run); with all of it counted over {bench}: {ours['step_amortized_with_load_s']:.4f} s per step, "
          f"{trl['step_s'] / ours['step_amortized_with_load_s']:.2f}x")
    for side in [t for t in ("trl", "ours", "baseline") if t in results] if args.profile else ():
        print((args.profile / f"{side}_profile.txt").read_text(encoding="utf-8").splitlines()[0])
    if not args.device.startswith("cuda"):
        print(f"peak RSS: TRL {trl['peak_rss_mb']:.0f} MB, ours {ours['peak_rss_mb']:.0f} MB")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
