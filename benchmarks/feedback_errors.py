"""Where do wrong preference pairs come from? A diagnosis of a world collect folder against the ground truth.

    python benchmarks/feedback_errors.py runs/iter/round-1/collect      # any `rlaifv collect` output on world prompts

A pair's direction is wrong when its chosen response has more ground-truth errors e(y) than its rejected one
(eval.world_metrics.feedback_metrics). That can only happen when the response scores (-rejected claims) and e(y)
disagree, and they disagree for two reasons, counted here over every judged response:

  * the labeler: a false claim accepted, a true claim rejected (by the kind of claim: an absent object that usually
    co-occurs with a present one, another absent object, a wrong color / size / position);
  * the claims: an error e(y) counts that no claim carries (or a claim that carries two), i.e. what the splitter
    turned the response into.

Prints one table of the labeler's verdicts per claim kind, one of score vs e(y) per response, and the share of
wrong pairs explained by each cause. Reads the stores only; computes nothing with a model.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path


def claim_kind(scene, statement: str) -> tuple[str, bool | None]:
    """(kind, holds) of one claim: holds is the ground truth (None when the claim names no single object)."""
    from rlaifv.world.language import attribute_checks, parse_mentions

    mentions = parse_mentions(statement)
    if len(mentions) != 1:
        return f"{len(mentions)} objects", None
    m = mentions[0]
    if m.category not in scene.categories:
        partners = {p for c in scene.categories for p in scene_partners(c)}
        return ("absent partner" if m.category in partners else "absent other"), False
    obj = scene.object_of(m.category)
    wrong = [name for name, said, truth in (("color", m.color, obj.color), ("size", m.size, obj.size),
                                            ("position", m.cell, obj.cell)) if said is not None and said != truth]
    if wrong:
        return "wrong " + "+".join(wrong), False
    stated = [name for name, said in (("color", m.color), ("size", m.size), ("position", m.cell)) if said is not None]
    assert all(attribute_checks(scene, m))  # what e(y) checks, the same way
    return "true " + ("+".join(stated) or "existence"), True


def scene_partners(category: str) -> list[str]:
    """The category the world's prior adds beside `category` (its hard negative when absent)."""
    from rlaifv.world.scenes import PARTNER

    return [PARTNER[category]] if category in PARTNER else []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="a collect folder on world prompts")
    args = ap.parse_args()

    from rlaifv.eval.world_metrics import world_errors
    from rlaifv.pipelines.collect import stores
    from rlaifv.preferences import pair_store
    from rlaifv.prompts import scene_of

    s = stores(args.out)
    scenes = {p.prompt_id: scene_of(p) for p in s["prompts"].read()}
    if not any(scenes.values()):
        print("not world prompts: no ground truth", file=sys.stderr)
        return 2
    claims = {(c.prompt_id, c.sample_idx, c.claim_idx): c for c in s["claims"].read()}
    verdicts = {(v.prompt_id, v.sample_idx, v.claim_idx): v for v in s["verdicts"].read()}
    texts = {(c.prompt_id, c.sample_idx): c.text for c in s["candidates"].read()}

    table: dict[str, Counter] = defaultdict(Counter)  # kind -> accepted / rejected
    rejected_per: Counter = Counter()  # (prompt, sample) -> rejected claims
    false_claims_per: Counter = Counter()  # (prompt, sample) -> false claims (ground truth)
    for key, claim in claims.items():
        verdict = verdicts.get(key)
        if verdict is None:
            continue
        kind, holds = claim_kind(scenes[claim.prompt_id], claim.statement)
        accepted = verdict.p_yes > verdict.p_no
        table[kind]["accepted" if accepted else "rejected"] += 1
        rejected_per[key[:2]] += not accepted
        false_claims_per[key[:2]] += holds is False

    print(f"{'claim kind':<28} {'claims':>8} {'accepted':>9} {'labeler right':>14}")
    for kind in sorted(table):
        n = sum(table[kind].values())
        acc = table[kind]["accepted"]
        right = acc if kind.startswith("true") else (n - acc if not kind[0].isdigit() else None)
        share = "-" if right is None else f"{right / n:.4f}"
        print(f"{kind:<28} {n:>8} {acc:>9} {share:>14}")

    # per response: does -score count e(y)? split the disagreement into labeler and claim coverage
    agree = labeler_off = coverage_off = 0
    for key, text in texts.items():
        e = world_errors(scenes[key[0]], text)
        if rejected_per[key] == e:
            agree += 1
        elif false_claims_per[key] == e:
            labeler_off += 1  # the claims carry e(y) exactly; the verdicts miscounted
        else:
            coverage_off += 1  # the claims themselves do not carry e(y)
    total = agree + labeler_off + coverage_off
    print(f"\nresponses: {total}; rejected claims == e(y): {agree / total:.4f}; off through the labeler: "
          f"{labeler_off / total:.4f}; off because the claims do not carry e(y): {coverage_off / total:.4f}")

    # a wrong pair: the labeler's fault when the chosen response has more false claims than the rejected one (a
    # perfect labeler would have ranked them right or tied them); else the claims' granularity (one claim carrying
    # several of e(y)'s errors, or an error no claim carries)
    by_text = {(pid, text): key for key, text in texts.items() for pid in [key[0]]}
    pairs = Counter()
    for pair in pair_store(args.out).read():
        scene = scenes[pair.prompt_id]
        ec, er = world_errors(scene, pair.chosen), world_errors(scene, pair.rejected)
        if ec < er:
            pairs["right direction"] += 1
        elif ec == er:
            pairs["true tie"] += 1
        else:
            fc = false_claims_per[by_text[pair.prompt_id, pair.chosen]]
            fr = false_claims_per[by_text[pair.prompt_id, pair.rejected]]
            pairs["wrong direction: " + ("labeler" if fc > fr else "claim granularity")] += 1
    decided = sum(n for k, n in pairs.items() if k != "true tie")
    print("pairs:", dict(pairs), f"feedback precision {pairs['right direction'] / max(decided, 1):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
