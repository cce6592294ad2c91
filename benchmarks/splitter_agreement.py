"""Agreement of the world's splitter LM with the RuleSplitter on held-out world responses, and its training time.

    python benchmarks/splitter_agreement.py [--seed 0] [--n 1000] [--steps 200] [--threads 2] [--load PATH]

Trains the world splitter (`rlaifv.world.splitter.train_splitter`) into a temporary folder -- or loads one with
`--load` -- then splits N responses of the `val` split (disjoint from the training scenes) with `LLMSplitter` and
with `RuleSplitter`. Reports exact-match agreement per response (identical claim lists) and per claim (the rule
claim appears, statement and question verbatim, at the same position in the LLM's list), the share of responses the
LLM splitter rejected as BadInput, and the seconds spent training and splitting.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path


def agreement(llm: list, rules: list) -> dict[str, float]:
    """Exact-match rates of LLM claims against rule claims (BadInput counts as disagreement)."""
    same_response = same_claims = total_claims = bad = 0
    for got, want in zip(llm, rules):
        total_claims += len(want)
        if isinstance(got, Exception):
            bad += 1
            continue
        same_response += got == want
        same_claims += sum(g == w for g, w in zip(got, want))
    n = len(rules)
    return {
        "responses": n,
        "claims": total_claims,
        "response_agreement": same_response / n,
        "claim_agreement": same_claims / total_claims,
        "bad_input_rate": bad / n,
    }


def run_seed(seed: int, args: argparse.Namespace) -> tuple[dict, list, list, list]:
    """Train (or load) one splitter, split the held-out responses both ways; (row, items, llm, rules)."""
    from rlaifv.feedback.split_llm import LLMSplitter
    from rlaifv.text.rules import RuleSplitter
    from rlaifv.world.splitter import train_splitter, world_responses

    with tempfile.TemporaryDirectory() as tmp:
        path, stats = args.load, {}
        if path is None:
            path = Path(tmp) / "splitter"
            stats = train_splitter(seed, path, args.steps, args.batch_size, args.lr, layers=args.layers)
        items = world_responses(seed, "val", (args.n + 1) // 2)[: args.n]
        rules = RuleSplitter().split(items)
        start = time.perf_counter()
        llm = LLMSplitter(path, max_new_tokens=64, batch_size=64).split(items)
        split_s = time.perf_counter() - start
    row = {"seed": seed, **stats, **agreement(llm, rules), "split_s": split_s}
    return row, items, llm, rules


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--n", type=int, default=1000, help="held-out responses (2 per val scene)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (1 is steadier on a shared machine)")
    ap.add_argument("--load", type=Path, default=None, help="a trained splitter folder; skips training")
    ap.add_argument("--show", type=int, default=3, help="disagreements to print")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| seed | steps | train s | final loss | responses | claims | response agreement | claim agreement "
          "| BadInput | split s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    shown = 0
    for seed in args.seeds:
        row, items, llm, rules = run_seed(seed, args)
        print(
            f"| {seed} | {row.get('steps', '-')} | {row.get('seconds', '-')} "
            f"| {row.get('final_loss', float('nan')):.4f} "
            f"| {row['responses']} | {row['claims']} | {row['response_agreement']:.3f} | {row['claim_agreement']:.3f} "
            f"| {row['bad_input_rate']:.3f} | {row['split_s']:.1f} |",
            flush=True,
        )
        for (_, response), got, want in zip(items, llm, rules):
            if got != want and shown < args.show:
                shown += 1
                print(f"\nresponse: {response}\n  rules: {want}\n  llm:   {got}\n")


if __name__ == "__main__":
    main()
