"""Which implicit reward ranks a finished demo's best-of-N answers by their truth: per reference, per form, per N.

    python benchmarks/bon_reward.py --run runs/demo-1 --out runs/bonrew-1          # val split, 16 samples, 200 scenes

`--run` is a finished `rlaifv demo --workdir` (or `rlaifv iterate` on the world). Its final policy draws `--n` answers
per scene of the world's `val` split (the split settings are chosen on; `test` only reports), once, at best-of-N's
temperature. The answers are then scored under the final policy against every earlier policy of the run as the
reference: the round's own starting policy (the paper's reward; with per-round references the rewards of the rounds
telescope, so the base policy as reference is the reward of the whole alignment, beta * log(pi_K / pi_0)) and each
one between. Each reference gives both forms, `mean` (divided by the answer's tokens) and `sum`; the policy's own
likelihood (`likelihood`, infer.bon), which reads no reference, is one more row.

The world knows every answer's truth, so each reward is measured two ways:

- ranking accuracy: over pairs of answers to one scene whose truth differs, how often the reward prefers the one
  with fewer false statements (e(y), as feedback precision counts them), and separately the one without a
  hallucinated object when only one has any (what CHAIRs counts);
- best-of-N: CHAIRs, Cover and mean length of the answers each reward picks among the first N, N = 1 .. n.

Prints one table per measure and writes OUT/bon_reward.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from rlaifv.config import BON_NO_REFERENCE, BON_REWARDS, BonConfig, HFEngineConfig
from rlaifv.eval.world_metrics import false_statements
from rlaifv.files import write_json
from rlaifv.infer.bon import row_rewards
from rlaifv.pipelines.best_of_n import best_of_n, bon_stores
from rlaifv.pipelines.world_bon import BON_TEMPERATURE, bon_table
from rlaifv.prompts import scene_of, write_world_prompts
from rlaifv.world.config import WorldConfig
from rlaifv.world.language import parse_mentions

KINDS = BON_REWARDS  # every form, the world's (likelihood) with the paper's


def policies(run: Path) -> list[str]:
    """The run's policy after each round (round 0: the starting one), as its summary lists them."""
    return [row["policy"] for row in json.loads((run / "summary.json").read_text())["rounds"]]


def score_against(out: Path, policy: str, references: list[str], wcfg: WorldConfig, split: str, scenes: int, n: int,
                  max_new_tokens: int, device: str) -> dict[str, list]:
    """BonRows of one set of answers (sampled once, from `policy`) scored against each reference."""
    prompts = out / "prompts.jsonl"
    if not prompts.exists():
        out.mkdir(parents=True, exist_ok=True)
        write_world_prompts(wcfg.seed, split, scenes, prompts, wcfg.prior)
    rows, first = {}, None
    for k, reference in enumerate(references):
        folder = out / f"reference-{k}"
        if first is not None and not (folder / "candidates").exists():  # the same answers: copy, do not resample
            folder.mkdir(parents=True, exist_ok=True)
            for name in ("prompts", "candidates"):
                shutil.copytree(first / name, folder / name)
        cfg = BonConfig(policy=HFEngineConfig(path=policy, device=device),
                        reference=HFEngineConfig(path=reference, device=device), n=n, reward="mean",
                        temperature=BON_TEMPERATURE, max_new_tokens=max_new_tokens, seed=wcfg.seed)
        best_of_n(folder, cfg, prompts)
        rows[reference] = sorted(bon_stores(folder, cfg.shard_size)["bon"].read_all(), key=lambda r: r.prompt_id)
        first = first or folder
    return rows


def ranking(rows: list, scenes: dict[str, Any], kind: str) -> dict[str, float]:
    """Pairwise accuracy of the reward against e(y) and against 'has a hallucinated object'."""
    right = {"e": [0, 0], "hallucinated": [0, 0]}
    for row in rows:
        scene = scenes[row.prompt_id]
        r = row_rewards(row, kind)
        e = [false_statements(scene, t) for t in row.texts]
        hall = [any(m.category not in scene.categories for m in parse_mentions(t)) for t in row.texts]
        for i, j in itertools.combinations(range(len(row.texts)), 2):
            if r[i] is None or r[j] is None or r[i] == r[j]:
                continue
            for name, truth in (("e", e), ("hallucinated", hall)):
                if truth[i] != truth[j]:
                    better = i if truth[i] < truth[j] else j
                    right[name][0] += (r[better] > r[i + j - better])
                    right[name][1] += 1
    return {f"acc_{name}": (a / b if b else float("nan")) for name, (a, b) in right.items()} | {
        f"pairs_{name}": b for name, (_, b) in right.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a finished demo work folder (summary.json, rounds)")
    ap.add_argument("--out", type=Path, required=True, help="where the answers and their scores go (resumes)")
    ap.add_argument("--seed", type=int, default=0, help="the run's world seed")
    ap.add_argument("--split", default="val", help="scenes to draw on: val (default; test only reports)")
    ap.add_argument("--scenes", type=int, default=200)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.split == "test":
        print("note: the test split reports; choose nothing on it", file=sys.stderr)
    wcfg = WorldConfig(seed=args.seed)
    chain = policies(args.run)
    final = chain[-1]
    references = list(dict.fromkeys(p for p in chain if p != final))  # every earlier policy, base first
    if not references:
        sys.exit("no round changed the policy: every reward would be 0")
    rows = score_against(args.out, final, references, wcfg, args.split, args.scenes, args.n, args.max_new_tokens,
                         args.device)
    scenes = {p.prompt_id: scene_of(p) for p in bon_stores(args.out / "reference-0", 1000)["prompts"].read()}
    ns = [n for n in (1, 2, 4, 8, 16) if n <= args.n]
    result: dict[str, Any] = {"run": str(args.run), "split": args.split, "policy": final, "references": {}}
    print(f"final policy {final}; {len(scenes)} {args.split} scenes, {args.n} answers each")
    print("| reference | form | acc e(y) | pairs | acc hallucinated | pairs | "
          + " | ".join(f"bo{n} CHAIRs" for n in ns) + " | bo8 Cover |")
    print("|---|---|---|---|---|---|" + "---|" * len(ns) + "---|")
    for reference in references:
        for kind in KINDS:
            if kind in BON_NO_REFERENCE and reference != references[0]:
                continue  # reads no reference: one row
            label = ("none (reads no reference)" if kind in BON_NO_REFERENCE
                     else "base" if reference == chain[0] else f"round {chain.index(reference)} policy")
            acc = ranking(rows[reference], scenes, kind)
            table = bon_table(rows[reference], scenes, ns, [kind])
            result["references"].setdefault(reference, {})[kind] = {"label": label, **acc, "best_of": table}
            by_n = {t["n"]: t for t in table}
            print(f"| {label} | {kind} | {acc['acc_e']:.3f} | {acc['pairs_e']} | {acc['acc_hallucinated']:.3f} "
                  f"| {acc['pairs_hallucinated']} | " + " | ".join(f"{by_n[n]['chair_s']:.3f}" for n in ns)
                  + f" | {by_n.get(8, table[-1])['cover']:.3f} |")
    write_json(args.out / "bon_reward.json", result)


if __name__ == "__main__":
    main()
