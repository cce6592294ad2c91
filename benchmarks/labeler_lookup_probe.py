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
    ap.add_argument("--aux-weight", type=float, default=0.0,
                    help="weight of an auxiliary loss that regresses the answer position's hidden state after the "
                         "first layer onto the summed word embeddings of the question's content words")
    ap.add_argument("--cell-position", action="store_true",
                    help="add the cell's position words (top, left, ...) to each cell's summed embedding, and to the "
                         "auxiliary target when the question names a position")
    ap.add_argument("--match-init", type=float, default=0.0,
                    help="start the last layer's query and key projections at this multiple of the identity, so its "
                         "heads begin as content matchers (0: random init)")
    ap.add_argument("--layers", type=int, default=None, help="Llama depth (default: the world labeler's)")
    ap.add_argument("--scenes", type=int, default=20000, help="distinct training scenes, cycled through")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from rlaifv.config import WorldConfig
    from rlaifv.world.language import POSITION_PHRASES, sample_questions
    from rlaifv.world.models import IMAGE_TOKEN, build_model, build_tokenizer, encode_prompt
    from rlaifv.world.scenes import CATEGORIES, COLORS, sample_scenes

    torch.manual_seed(args.seed)
    tok = build_tokenizer(args.seed)
    shape = WorldConfig().labeler_model
    if args.layers:
        shape = shape.model_copy(update={"text_layers": args.layers})
    vlm = build_model(tok, shape, args.seed).to(args.device)
    lm, head, embed = vlm.model.language_model, vlm.lm_head, vlm.model.language_model.embed_tokens
    if args.match_init:
        attn = lm.layers[-1].self_attn
        with torch.no_grad():
            for proj in (attn.q_proj, attn.k_proj):
                proj.weight.copy_(args.match_init * torch.eye(*proj.weight.shape))
    word = {}

    def wid(w: str) -> int:
        if w not in word:
            word[w] = tok(" " + w, add_special_tokens=False)["input_ids"][0]
        return word[w]

    yes, no, image = wid("Yes"), wid("No"), tok.convert_tokens_to_ids(IMAGE_TOKEN)
    scenes = sample_scenes(args.seed, "train", args.scenes)
    held_out = sample_scenes(args.seed, "val", 40 * args.batch)
    rng = np.random.default_rng(args.seed)
    prompts: dict[str, list[int]] = {}

    PLACE_WORDS = ("top", "bottom", "left", "right", "center")
    cell_place = [[w for w in phrase.split() if w in PLACE_WORDS] for phrase in POSITION_PHRASES]

    per_cell = 3 if args.cells == "split" else 1

    kinds: list[str] = []

    def content(question: str) -> torch.Tensor:
        words = [w.strip("?") for w in question.split()]
        keep = [w for w in words if w in CATEGORIES or w in COLORS or w in ("small", "large")]
        if args.cell_position:
            keep += [w for w in words if w in PLACE_WORDS]
        return sum(embed.weight[wid(w)].detach() for w in keep).cpu()

    def batch(chunk):
        rows, answers, goals = [], [], []
        kinds.clear()
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
            goals.append(content(q.question))
            kinds.append(q.kind)
        width = max(map(len, rows))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows], device=args.device)  # (B, T)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=args.device)  # (B, T)
        emb = embed(ids)  # (B, T, H)
        for i, s in enumerate(chunk):
            # (9 * per_cell, H): empty cells stay zero
            cells = torch.zeros(9 * per_cell, emb.shape[-1], device=args.device)
            for o in s.objects:
                words = [embed.weight[wid(w)] for w in (o.category, o.color, o.size)]
                if args.cells == "split":
                    cells[3 * o.cell : 3 * o.cell + 3] = torch.stack(words)
                else:
                    cells[o.cell] = words[0] if args.cells == "cat" else sum(words)
            if args.cell_position and args.cells == "sum":
                for c in range(9):
                    cells[c] = cells[c] + sum(embed.weight[wid(w)] for w in cell_place[c])
            emb[i, ids[i] == image] = cells
        return emb, mask, torch.tensor(answers, device=args.device), torch.stack(goals).to(args.device)

    opt = torch.optim.AdamW([*lm.parameters(), *head.parameters()], lr=args.lr)
    start = time.perf_counter()
    for step in range(args.steps):
        start_at = (step * args.batch) % (len(scenes) - args.batch)
        emb, mask, y, goal = batch(scenes[start_at : start_at + args.batch])
        out = lm(inputs_embeds=emb, attention_mask=mask, output_hidden_states=True)
        logits = head(out.last_hidden_state[:, -1])  # (B, V)
        ce = torch.nn.functional.cross_entropy(logits, y)
        h1 = out.hidden_states[1][:, -1]  # (B, H): residual stream after the first layer
        aux = ((h1 - goal) ** 2).sum(-1).mean() / (goal**2).sum(-1).mean()
        loss = ce + args.aux_weight * aux
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0:
            print(f"step {step:5d}  verdict CE {ce.item():.3f}  aux {aux.item():.3f}  "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
    with torch.no_grad():
        emb, mask, y, _ = batch(held_out)
        logits = head(lm(inputs_embeds=emb, attention_mask=mask).last_hidden_state[:, -1])
        said_yes = logits[:, yes] > logits[:, no]
        print(f"held-out accuracy ({' '.join(args.kinds)}, cells={args.cells}, aux={args.aux_weight}, "
              f"layers={shape.text_layers}, lr={args.lr}, batch={args.batch}, steps={args.steps}): "
              f"{(said_yes == (y == yes)).float().mean().item():.3f}")
        right = (said_yes == (y == yes)).cpu().numpy()
        print("  by kind: " + ", ".join(f"{k} {right[np.array(kinds) == k].mean():.3f}" for k in args.kinds))


if __name__ == "__main__":
    main()
