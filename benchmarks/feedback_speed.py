"""Speed of the feedback engine's two shared-prefix paths, measured side by side in one run.

    python benchmarks/feedback_speed.py judge                        # tiny world labeler, CPU
    python benchmarks/feedback_speed.py sample                       # tiny world policy, CPU
    python benchmarks/feedback_speed.py judge --shape llava-7b --device cuda   # LLaVA-1.5-7B shape, random bf16
    python benchmarks/feedback_speed.py claims                       # the world's own claims, as collect judges them
    python benchmarks/feedback_speed.py batches --images 96          # prompts sampled together, 8 to 96

judge: yes/no verdicts for Q questions about each of I images -- one question per forward (batches of --batch, what
the paper's code does) vs the image prefix encoded once per packed row (HFEngine.yes_no_shared). Checks that both
give the same probabilities.
claims: the judging stage's real work -- world prompts, N samples each from the base policy, split by the rule
splitter -- judged one claim per forward, with the shared prefix, and with the shared prefix asking each distinct
question of an image once (feedback.judge.run_judge). Samples of one image repeat one another's claims.
sample: N samples per prompt -- `generate(num_return_sequences=N)` (prefills every sample) vs prefill once and decode
N from the repeated cache, by `generate` (HFEngine.sample up to 0.1.0) and by `decode_from_cache` (HFEngine.sample
now: finished rows leave the batch, no `generate` overhead).
batches: the same N samples per prompt by HFEngine.sample, with --batch-sizes prompts prefilled and decoded together
(SampleConfig.prompts_per_batch); each row of the table samples every image once, so the seconds compare directly.
"""

from __future__ import annotations

import argparse
import time

import torch


def tiny_engine(role: str):
    from rlaifv.engines.hf import HFEngine
    from rlaifv.world.bootstrap import bootstrap
    from rlaifv.world.config import WorldConfig

    models = bootstrap(WorldConfig())
    return HFEngine(models.policy if role == "policy" else models.labeler)


def llava_7b_model(device: str, mini: bool = False):
    """(model, processor) of LLaVA-1.5-7B's shape (CLIP-L/336: 576 image tokens; Llama 4096 x 32 layers; 32k
    vocabulary) with random bf16 weights. `mini` keeps the token geometry (576 image tokens, 32k vocabulary, 128-wide
    heads) with a 2 x 1024 Llama and a 2 x 64 CLIP: the 7B shape's memory terms per layer at a size a CPU steps
    through in seconds."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from rlaifv.world.models import CHAT_TEMPLATE, IMAGE_TOKEN, build_tokenizer

    tok = build_tokenizer(0)
    tok.model_max_length = 4096
    if mini:
        vision = CLIPVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=1,
                                  image_size=336, patch_size=14, projection_dim=64)
        width, ffn, layers, heads = 1024, 2752, 2, 8
    else:
        vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)
        width, ffn, layers, heads = 4096, 11008, 32, 32
    text = LlamaConfig(vocab_size=32000, hidden_size=width, intermediate_size=ffn, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=4096,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                      image_seq_length=576, vision_feature_layer=-2, vision_feature_select_strategy="default")
    torch.manual_seed(0)
    with torch.device(device):  # built on the device in bf16: no fp32 copy, no 7B random init on the CPU
        model = LlavaForConditionalGeneration._from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
    image_processor = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                               num_additional_image_tokens=1, vision_feature_select_strategy="default",
                               chat_template=CHAT_TEMPLATE)
    return model, processor


def llava_7b_engine(device: str):
    """An HFEngine over `llava_7b_model(device)`."""
    from rlaifv.engines.hf import HFEngine

    model, processor = llava_7b_model(device)
    return HFEngine.from_model(model, processor, "llava-1.5-7b-shape")


def questions_for(n: int) -> list[str]:
    from rlaifv.world.language import POSITION_PHRASES
    from rlaifv.world.scenes import CATEGORIES, COLORS

    out = []
    for i in range(n):
        cat, color = CATEGORIES[i % len(CATEGORIES)], list(COLORS)[i % len(COLORS)]
        form = i % 3
        if form == 0:
            out.append(f"Is there a {color} {cat} in the image? Answer yes or no.")
        elif form == 1:
            out.append(f"Is the {cat} {POSITION_PHRASES[i % 9]}? Answer yes or no.")
        else:
            out.append(f"Does the image show a {cat} next to another object? Answer yes or no.")
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_col(device: str, header: bool = False) -> str:
    """A peak-memory column on CUDA (torch's peak allocated, weights included); nothing on the CPU."""
    if not device.startswith("cuda"):
        return ""
    return " peak GB |" if header else f" {torch.cuda.max_memory_allocated() / 2**30:.1f} |"


def one_question_per_forward(engine, flat: list, batch: int) -> list[tuple[float, float]]:
    """(P_yes, P_no) for each (image, question), the image encoded again for every question, `batch` per forward."""
    out = []
    for lo in range(0, len(flat), batch):
        chunk = flat[lo : lo + batch]
        out.extend(engine.yes_no([im for im, _ in chunk], [q for _, q in chunk]))
    return out


def bench_judge(engine, images, n_questions: int, batch: int, device: str, per_pack: int) -> None:
    qs = questions_for(n_questions)
    flat = [(im, q) for im in images for q in qs]

    def naive():
        return one_question_per_forward(engine, flat, batch)

    def shared():
        return [p for row in engine.yes_no_shared([(im, qs) for im in images], questions_per_pack=per_pack)
                for p in row]

    naive(), shared()  # warm-up
    times = {}
    for name, fn in (("one question per forward", naive), ("shared prefix, packed", shared)):
        sync(device)
        reset_peak(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times[name] = (time.perf_counter() - start, result, peak_col(device))
    a, b = times["one question per forward"][1], times["shared prefix, packed"][1]
    diff = max(max(abs(x[0] - y[0]), abs(x[1] - y[1])) for x, y in zip(a, b))
    base = times["one question per forward"][0]
    print(f"{len(images)} images x {n_questions} questions, {per_pack} questions per packed row, device {device}")
    print(f"| path | seconds | claims/s | speedup |{peak_col(device, True)}\n|---|---|---|---|"
          + "---|" * bool(peak_col(device, True)))
    for name, (sec, _, peak) in times.items():
        print(f"| {name} | {sec:.3f} | {len(flat) / sec:.0f} | {base / sec:.2f}x |{peak}")
    print(f"max |dP| between the paths: {diff:.2e}")


def bench_claims(n_prompts: int, n: int, batch: int, workdir: str, repeats: int) -> None:
    """Judge the claims `rlaifv collect` makes on world prompts, three ways, side by side."""
    from pathlib import Path

    from rlaifv.config import CollectConfig, JudgeConfig
    from rlaifv.feedback.judge import ask_each_once
    from rlaifv.pipelines.collect import run_stage, stores
    from rlaifv.prompts import load_image, write_world_prompts
    from rlaifv.world.config import WorldConfig

    world = WorldConfig()
    out = Path(workdir)
    prompts_file = write_world_prompts(world.seed, "prompts", n_prompts, out / "prompts.jsonl", world.prior)
    cfg = CollectConfig.model_validate({"sample": {"n": n}})
    for stage in ("prompts", "sample", "claims"):
        run_stage(stage, prompts_file, out, cfg, world)
    s = stores(out)
    prompts = {p.prompt_id: p for p in s["prompts"].read()}
    by_prompt: dict[str, list[str]] = {}
    for c in s["claims"].read():
        by_prompt.setdefault(c.prompt_id, []).append(c.question)
    images = {pid: load_image(prompts[pid]) for pid in by_prompt}
    groups = [(images[pid], qs) for pid, qs in by_prompt.items()]
    flat = [(image, q) for image, qs in groups for q in qs]
    engine = tiny_engine("labeler")

    def naive():
        return one_question_per_forward(engine, flat, batch)

    judge = JudgeConfig()  # run_judge's batching: prompts_per_batch prompts, packs_per_forward rows per forward

    def batched(ask):
        return [p for lo in range(0, len(groups), judge.prompts_per_batch)
                for row in ask(groups[lo : lo + judge.prompts_per_batch]) for p in row]

    def ask(g):
        return engine.yes_no_shared(g, judge.questions_per_pack, judge.packs_per_forward)

    def shared():
        return batched(ask)

    def shared_distinct():
        return batched(lambda g: ask_each_once(g, ask)[0])

    n_claims, n_distinct = len(flat), len({(id(image), q) for image, q in flat})
    print(f"{len(groups)} world prompts x {n} samples: {n_claims} claims, {n_distinct} distinct questions "
          f"({n_claims / n_distinct:.2f} claims per question), threads {torch.get_num_threads()}")
    paths = ((f"one claim per forward (batches of {batch})", naive),
             (f"shared prefix, every claim ({judge.packs_per_forward} packed rows per forward)", shared),
             ("shared prefix, each distinct question once (run_judge)", shared_distinct))
    for _, fn in paths:
        fn()  # warm-up
    print(f"| path | seconds (best of {repeats}) | claims/s | speedup |\n|---|---|---|---|")
    base, results = None, []
    for name, fn in paths:
        sec = float("inf")
        for _ in range(repeats):  # the best run: this machine's speed varies by ~10 % from run to run
            start = time.perf_counter()
            result = fn()
            sec = min(sec, time.perf_counter() - start)
        results.append(result)
        base = base or sec
        print(f"| {name} | {sec:.3f} | {n_claims / sec:.0f} | {base / sec:.2f}x |")
    diff = max(max(abs(x[0] - y[0]), abs(x[1] - y[1])) for r in results[1:] for x, y in zip(results[0], r))
    print(f"max |dP| against one claim per forward: {diff:.2e}")


def bench_sample(engine, images, n: int, max_new_tokens: int, device: str) -> None:
    from rlaifv.engines.base import Sampling

    question = "Describe this image in detail."
    setting = Sampling(max_new_tokens=max_new_tokens, do_sample=True, temperature=0.7)

    def repeated_prefill():
        enc = engine._inputs(images, [question] * len(images))
        out = engine.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=0.7,
                                    top_k=0, num_return_sequences=n)
        return int((out[:, enc["input_ids"].shape[1]:] != engine.tokenizer.pad_token_id).sum())

    def shared_prefill_generate():
        enc = engine._inputs(images, [question] * len(images))
        ids, mask = enc["input_ids"], enc["attention_mask"]
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        vision = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
        cache = engine.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=position_ids[:, :-1],
                             use_cache=True, logits_to_keep=1, **vision).past_key_values
        cache.batch_repeat_interleave(n)
        out = engine.model.generate(input_ids=ids.repeat_interleave(n, 0), attention_mask=mask.repeat_interleave(n, 0),
                                    cache=cache, max_new_tokens=max_new_tokens, do_sample=True, temperature=0.7,
                                    top_k=0)
        return sum(k for _, k in engine._decode(out[:, ids.shape[1]:]))

    def shared_prefill():
        rows = engine.sample(images, [question] * len(images), n, setting, seed=0)
        return sum(k for samples in rows for _, k in samples)

    repeated_prefill(), shared_prefill_generate(), shared_prefill()
    print(f"{len(images)} prompts x {n} samples, up to {max_new_tokens} new tokens, device {device}")
    print(f"| path | seconds | generated tokens/s | speedup |{peak_col(device, True)}\n|---|---|---|---|"
          + "---|" * bool(peak_col(device, True)))
    base = None
    paths = (("num_return_sequences (prefill x N)", repeated_prefill),
             ("prefill once, generate decodes", shared_prefill_generate),
             ("prefill once, decode_from_cache (HFEngine.sample)", shared_prefill))
    for name, fn in paths:
        torch.manual_seed(0)
        sync(device)
        reset_peak(device)
        start = time.perf_counter()
        tokens = fn()
        sync(device)
        sec = time.perf_counter() - start
        base = base or sec
        print(f"| {name} | {sec:.3f} | {tokens / sec:.0f} | {base / sec:.2f}x |{peak_col(device)}")


def bench_batches(engine, images, n: int, max_new_tokens: int, sizes: list[int], repeats: int) -> None:
    from rlaifv.engines.base import Sampling
    from rlaifv.world.language import instruction_for

    questions = [instruction_for(i) for i in range(len(images))]
    setting = Sampling(max_new_tokens=max_new_tokens, do_sample=True, temperature=0.7)

    def run(size: int) -> float:
        start = time.perf_counter()
        for lo in range(0, len(images), size):
            engine.sample(images[lo : lo + size], questions[lo : lo + size], n, setting, seed=lo)
        return time.perf_counter() - start

    run(sizes[0])  # warm-up: the fast-path check and first-call costs
    print(f"{len(images)} prompts x {n} samples, up to {max_new_tokens} new tokens; best of {repeats} runs")
    print("| prompts per batch | rows per batch | seconds | vs the first |\n|---|---|---|---|")
    first = None
    for size in sizes:
        sec = min(run(size) for _ in range(repeats))
        first = first or sec
        print(f"| {size} | {size * n} | {sec:.2f} | {first / sec:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("judge", "sample", "claims", "batches"))
    ap.add_argument("--shape", choices=("tiny", "llava-7b"), default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--questions", type=int, default=64, help="yes/no questions per image (judge)")
    ap.add_argument("--per-pack", type=int, default=0, help="questions per packed row (0: all of an image's)")
    ap.add_argument("--batch", type=int, default=32, help="questions per forward on the one-per-forward path")
    ap.add_argument("--n", type=int, default=10, help="samples per prompt (sample, claims)")
    ap.add_argument("--prompts", type=int, default=64, help="world prompts (claims)")
    ap.add_argument("--workdir", default="", help="where the claims path keeps its collect run (default: a temp dir)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="timed runs per path, the best one reported (claims, batches)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32, 48, 96],
                    help="prompts per batch to compare (batches)")
    ap.add_argument("--policy", default="", help="a world policy folder to sample from (sample, batches; default: "
                                                 "the seed-0 world's base policy, bootstrapped if not cached)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.what == "claims":
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            bench_claims(args.prompts, args.n, args.batch, args.workdir or tmp, args.repeats)
        return

    from rlaifv.world.render import render
    from rlaifv.world.scenes import sample_scenes

    images = [render(s) for s in sample_scenes(0, "test", args.images)]
    if args.shape == "llava-7b":
        images = [im.resize((336, 336)) for im in images]
        engine = llava_7b_engine(args.device)
    elif args.policy and args.what != "judge":
        from rlaifv.engines.hf import HFEngine

        engine = HFEngine(args.policy, device=args.device)
    else:
        engine = tiny_engine("labeler" if args.what == "judge" else "policy")
        engine.model.to(args.device)
        engine.device = torch.device(args.device)
    print(f"model: {engine.path}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    if args.what == "judge":
        bench_judge(engine, images, args.questions, args.batch, args.device, args.per_pack or args.questions)
    elif args.what == "batches":
        bench_batches(engine, images, args.n, args.max_new_tokens, args.batch_sizes, args.repeats)
    else:
        bench_sample(engine, images, args.n, args.max_new_tokens, args.device)


if __name__ == "__main__":
    main()
