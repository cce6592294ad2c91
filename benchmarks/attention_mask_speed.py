"""Attention alone at the DPO benchmark's shape: what the packed block mask costs against plain causal attention.

    python benchmarks/attention_mask_speed.py --device cuda        # LLaVA-1.5-7B heads, 150-word answers
    python benchmarks/attention_mask_speed.py --device cpu --heads 4 --layers 1   # a dry run

One packed DPO row is prefix (image + prompt, ~589 tokens) + chosen + rejected with a block mask (engines.packing),
which SDPA can only run on its memory-efficient kernel (or cuDNN's, where it takes a mask); TRL's two rows per pair are
causal with padding. Times forward + backward of `scaled_dot_product_attention` for every layer of one training step
of `--batch` pairs, so the result compares with the step times of benchmarks/dpo_vs_trl.py.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from rlaifv.engines.packing import block_mask, pack


def timed(fn, device: str, repeats: int) -> float:
    """Median seconds of fn() over `repeats` runs after two warm-ups."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=4, help="pairs per step")
    ap.add_argument("--prefix", type=int, default=589, help="image + prompt tokens")
    ap.add_argument("--response", type=int, default=170, help="tokens per response")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=32, help="layers per step (times are per step)")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    ids = list(range(args.prefix))
    packs = [pack(ids, [[1] * args.response, [2] * (args.response - 3 * i)]) for i in range(args.batch)]
    width = max(len(p) for p in packs)
    seg = torch.full((args.batch, width), -1)
    for i, p in enumerate(packs):
        seg[i, : len(p)] = torch.tensor(p.segments)
    mask = block_mask(seg.to(args.device), (seg >= 0).to(args.device), dtype)  # (B, 1, T, T)

    def qkv(rows: int, length: int):
        shape = (rows, args.heads, length, args.head_dim)
        return [torch.randn(shape, device=args.device, dtype=dtype, requires_grad=True) for _ in range(3)]

    def step(rows: int, length: int, **kw):
        q, k, v = qkv(rows, length)
        grad = torch.randn(rows, args.heads, length, args.head_dim, device=args.device, dtype=dtype)

        def run():
            for _ in range(args.layers):
                F.scaled_dot_product_attention(q, k, v, **kw).backward(grad)
        return run

    trl_len = args.prefix + args.response
    cases = [
        ("packed rows, block mask (default backend)", lambda: step(args.batch, width, attn_mask=mask), None),
        ("packed rows, block mask, memory-efficient", lambda: step(args.batch, width, attn_mask=mask),
         SDPBackend.EFFICIENT_ATTENTION),
        ("packed rows, block mask, cuDNN", lambda: step(args.batch, width, attn_mask=mask), SDPBackend.CUDNN_ATTENTION),
        ("packed length, causal only (lower bound)", lambda: step(args.batch, width, is_causal=True), None),
        ("TRL's rows (2 per pair), causal", lambda: step(2 * args.batch, trl_len, is_causal=True), None),
    ]
    print(f"device {args.device}, torch {torch.__version__}, {args.batch} pairs, packed row {width} tokens, "
          f"TRL row {trl_len}, {args.heads} heads x {args.head_dim}, {args.layers} layers, fwd + bwd per step")
    print("| attention | ms per step |\n|---|---|")
    for name, make, backend in cases:
        try:
            run = make()
            if backend is None:
                seconds = timed(run, args.device, args.repeats)
            else:
                with sdpa_kernel([backend]):
                    seconds = timed(run, args.device, args.repeats)
            print(f"| {name} | {1000 * seconds:.1f} |")
        except RuntimeError as exc:
            print(f"| {name} | not available ({str(exc).splitlines()[0][:80]}) |")


if __name__ == "__main__":
    main()
