"""Probe: how many steps does the tiny Llama need to learn the labeler's lookup, by cell representation?

    python benchmarks/labeler_lookup_probe.py --cells cat --steps 1200
    python benchmarks/labeler_lookup_probe.py --cells sum --steps 2500 --kinds existence color size

No vision tower: the 9 image-token positions of the real chat prompt get, per grid cell, either the input embedding
of the category word (`cat`), the sum of the category, color and size word embeddings (`sum`, what the bootstrap's
vision alignment targets), three tokens per cell holding those words one each (`split`), or nothing for an empty
cell. The LM then learns balanced yes/no questions. This
isolates the language model's side of the labeler problem (benchmarks/RESULTS.md) from perception.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", choices=("cat", "sum", "split"), default="sum",
                    help="cat: category word; sum: category+color+size summed in one token; "
                         "split: three tokens per cell (category, color, size)")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--kinds", nargs="+", default=["existence"], help="question kinds: existence color size position")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--end-at-category", action="store_true",
                    help="cut each prompt right after its category word, so the answer position holds the category "
                         "itself: a one-hop lookup instead of fetching the category first")
    args = ap.parse_args()

    from rlaifv.config import WorldConfig
    from rlaifv.world.language import sample_questions
    from rlaifv.world.models import IMAGE_TOKEN, build_model, build_tokenizer, encode_prompt
    from rlaifv.world.scenes import CATEGORIES, sample_scenes

    torch.manual_seed(args.seed)
    tok = build_tokenizer(args.seed)
    vlm = build_model(tok, WorldConfig().labeler_model, args.seed)
    lm, head, embed = vlm.model.language_model, vlm.lm_head, vlm.model.language_model.embed_tokens
    word = {}

    def wid(w: str) -> int:
        if w not in word:
            word[w] = tok(" " + w, add_special_tokens=False)["input_ids"][0]
        return word[w]

    yes, no, image = wid("Yes"), wid("No"), tok.convert_tokens_to_ids(IMAGE_TOKEN)
    scenes = sample_scenes(args.seed, "train", (args.steps + 40) * args.batch)
    rng = np.random.default_rng(args.seed)
    prompts: dict[str, list[int]] = {}

    per_cell = 3 if args.cells == "split" else 1

    def batch(chunk):
        rows, answers = [], []
        for s in chunk:
            want = bool(rng.random() < 0.5)  # balanced answers: the question text alone must not give them away
            q = next((q for q in sample_questions(s, rng, 40) if q.kind in args.kinds and q.answer == want), None)
            if q is None:
                q = next(q for q in sample_questions(s, rng, 40) if q.kind in args.kinds)
            if q.question not in prompts:
                ids = list(encode_prompt(tok, q.question, 9 * per_cell))
                if args.end_at_category:
                    category = next(c for c in CATEGORIES if f" {c}" in q.question)
                    ids = ids[: len(ids) - ids[::-1].index(wid(category))]
                prompts[q.question] = ids
            rows.append(prompts[q.question])
            answers.append(yes if q.answer else no)
        width = max(map(len, rows))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])  # (B, T), left-padded
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])  # (B, T)
        emb = embed(ids)  # (B, T, H)
        for i, s in enumerate(chunk):
            cells = torch.zeros(9 * per_cell, emb.shape[-1])  # (9 * per_cell, H): empty cells stay zero
            for o in s.objects:
                words = [embed.weight[wid(w)] for w in (o.category, o.color, o.size)]
                if args.cells == "split":
                    cells[3 * o.cell : 3 * o.cell + 3] = torch.stack(words)
                else:
                    cells[o.cell] = words[0] if args.cells == "cat" else sum(words)
            emb[i, ids[i] == image] = cells
        return emb, mask, torch.tensor(answers)

    opt = torch.optim.AdamW([*lm.parameters(), *head.parameters()], lr=args.lr)
    start = time.perf_counter()
    for step in range(args.steps):
        emb, mask, y = batch(scenes[step * args.batch : (step + 1) * args.batch])
        logits = head(lm(inputs_embeds=emb, attention_mask=mask).last_hidden_state[:, -1])  # (B, V)
        loss = torch.nn.functional.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0:
            print(f"step {step:5d}  loss {loss.item():.3f}  {time.perf_counter() - start:.0f} s", flush=True)
    with torch.no_grad():
        emb, mask, y = batch(scenes[-40 * args.batch :])
        logits = head(lm(inputs_embeds=emb, attention_mask=mask).last_hidden_state[:, -1])
        said_yes = logits[:, yes] > logits[:, no]
        print(f"held-out accuracy ({' '.join(args.kinds)}, cells={args.cells}): "
              f"{(said_yes == (y == yes)).float().mean().item():.3f}")


if __name__ == "__main__":
    main()
