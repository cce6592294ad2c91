"""Speed of best-of-N scoring: the prompt prefix shared across the N candidates vs one sequence per candidate,
measured side by side in one run.

    python benchmarks/bon_speed.py                                      # default world policy, CPU, 1 thread
    python benchmarks/bon_speed.py --shape llava-7b --device cuda       # LLaVA-1.5-7B shape, random bf16 weights
    python benchmarks/bon_speed.py --shape llava-7b-mini --prompts 2    # its token geometry, small widths, CPU

Scoring N answers to a prompt needs, per answer, the summed log-probs under the policy and the reference. Paths:

- one candidate per forward: image + prompt + answer as one sequence, one forward each (a plain BoN loop);
- per-candidate batches: the same sequences right-padded, --batch per forward (`separate_group_logps`);
- shared prefix: image + prompt once per packed row, the answers behind it under a block mask, only answer positions
  through the LM head (`group_logps`, what `rlaifv bon` runs).

Every path scores with both models (here one model instance plays both roles: the compute is the same, the memory
half). Answers are the world captioner's descriptions of each scene (--repeat joins several into one longer answer:
3 for the LLaVA shapes, ~115 tokens), tokenized as `rlaifv bon` does; the max |difference| of the log-probs between
the paths is printed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from feedback_speed import llava_7b_model, peak_col, reset_peak, sync, tiny_engine


def answers(scene, n: int, repeat: int, seed: int) -> list[str]:
    from rlaifv.world.language import noisy_caption

    rng = np.random.default_rng(seed)
    return [" ".join(noisy_caption(scene, rng) for _ in range(repeat)) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=("tiny", "llava-7b", "llava-7b-mini"), default="tiny",
                    help="tiny: the default world's policy; llava-7b: LLaVA-1.5-7B's shape, random bf16 weights; "
                         "llava-7b-mini: its token geometry (576 image tokens, 32k vocabulary) with a 2-layer LM, "
                         "for a CPU")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=16, help="candidates per prompt")
    ap.add_argument("--repeat", type=int, default=0, help="captions joined into one answer (0: 1 tiny, 3 llava)")
    ap.add_argument("--batch", type=int, default=16, help="sequences per forward on the per-candidate batched path")
    ap.add_argument("--per-pack", type=int, default=16,
                    help="most candidates per packed row (BonConfig.candidates_per_pack)")
    ap.add_argument("--packs", type=int, default=4, help="packed rows per forward (BonConfig.packs_per_batch)")
    ap.add_argument("--skip-single", action="store_true", help="skip the one-candidate-per-forward path")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from rlaifv.engines.packing import pack_bounds
    from rlaifv.infer.bon import Scorer
    from rlaifv.logps.packed import group_logps, separate_group_logps
    from rlaifv.records import Prompt
    from rlaifv.world.render import render
    from rlaifv.world.scenes import sample_scenes

    scenes = sample_scenes(0, "test", args.prompts)
    images = [render(s) for s in scenes]
    if args.shape.startswith("llava-7b"):
        images = [im.resize((336, 336)) for im in images]
        model, processor = llava_7b_model(args.device, mini=args.shape == "llava-7b-mini")
        scorer = Scorer.from_model(model, processor, args.shape)
    else:
        engine = tiny_engine("policy")
        scorer = Scorer.from_model(engine.model.to(args.device), engine.processor, engine.path)
    repeat = args.repeat or (1 if args.shape == "tiny" else 3)

    start = time.perf_counter()
    groups = []
    for k, (scene, image) in enumerate(zip(scenes, images)):
        prompt = Prompt(f"p{k}", "", None, "", "Describe this image in detail.", "bench", {})
        group, reasons = scorer.encode(prompt, image, answers(scene, args.n, repeat, k))
        if any(reasons):
            raise SystemExit(f"prompt {k}: {next(r for r in reasons if r)}; lower --repeat")
        groups.append(group)
    encode_s = time.perf_counter() - start
    n_answers = sum(len(g.responses) for g in groups)
    answer_tokens = sum(len(r) for g in groups for r in g.responses)
    print(f"model: {scorer.name}, torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}")
    print(f"{args.prompts} prompts x {args.n} candidates: prefix {len(groups[0].prefix_ids)} tokens, answers "
          f"{answer_tokens / n_answers:.0f} tokens on average; tokenizing took {encode_s:.2f} s (same for every path)")
    rows = sum(len(pack_bounds([len(r) for r in g.responses], len(g.prefix_ids), args.per_pack)) for g in groups)
    print(f"shared prefix: {rows} packed rows, i.e. {rows / len(groups):.1f} prefix encodings per prompt and model")

    def both(fn):
        return [fn(scorer.model), fn(scorer.model)]  # policy, then reference (one instance plays both here)

    paths = {
        "one candidate per forward": lambda m: separate_group_logps(m, groups, scorer.pad_id, batch_size=1),
        f"per-candidate batches of {args.batch}": lambda m: separate_group_logps(m, groups, scorer.pad_id,
                                                                                  batch_size=args.batch),
        f"shared prefix (<= {args.per_pack} per row, {args.packs} rows per forward)":
            lambda m: group_logps(m, groups, scorer.pad_id, args.per_pack, args.packs),
    }
    if args.skip_single:
        paths.pop("one candidate per forward")
    results = {}
    with torch.inference_mode():
        for fn in paths.values():  # warm-up on one prompt's worth
            saved = groups[1:]
            del groups[1:]
            fn(scorer.model)
            groups.extend(saved)
        for name, fn in paths.items():
            sync(args.device)
            reset_peak(args.device)
            start = time.perf_counter()
            out = both(fn)
            sync(args.device)
            results[name] = (time.perf_counter() - start, out, peak_col(args.device))
    shared_name = list(paths)[-1]
    shared_s, shared_out, _ = results[shared_name]
    header = peak_col(args.device, True)
    print(f"| path | seconds | candidates/s | shared prefix is x faster |{header}\n|---|---|---|---|"
          + "---|" * bool(header))
    for name, (sec, _, peak) in results.items():
        print(f"| {name} | {sec:.3f} | {2 * n_answers / sec:.1f} | {sec / shared_s:.2f} |{peak}")
    for name, (_, out, _) in results.items():
        if name != shared_name:
            diff = max((a - b).abs().max().item() for pair_a, pair_b in zip(out, shared_out)
                       for a, b in zip(pair_a, pair_b))
            print(f"max |d log p| {name} vs shared prefix: {diff:.2e}")


if __name__ == "__main__":
    main()
