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
    ap.add_argument("--subject-aux", type=float, default=0.0,
                    help="weight of auxiliary heads that read, at the question's category word after the first layer, "
                         "what the image holds for that category (present, color, size, cell): the lookup itself is "
                         "supervised densely instead of through the one-bit verdict")
    ap.add_argument("--per-row", type=int, default=1,
                    help="questions about one scene packed behind one image in a row (block mask, positions "
                         "restarting after the image prefix): the judge's own layout, more verdicts per step")
    ap.add_argument("--answer-aux", type=float, default=0.0,
                    help="(packed rows) weight of auxiliary heads that read, at each question's last token after the "
                         "last layer, both what the image holds for the subject and what the question asks, so "
                         "the second hop (gathering both operands of the comparison) is supervised too")
    ap.add_argument("--layers", type=int, default=None, help="Llama depth (default: the world labeler's)")
    ap.add_argument("--scenes", type=int, default=20000, help="distinct training scenes, cycled through")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from rlaifv.world.config import WorldConfig
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
        rows, answers, goals, subj = [], [], [], []
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
            category = next(c for c in CATEGORIES if f" {c}" in q.question)
            obj = s.object_of(category)
            subj.append((rows[-1][::-1].index(wid(category)),  # offset of the category word from the row's end
                         int(obj is not None),
                         list(COLORS).index(obj.color) if obj else -100,
                         ("small", "large").index(obj.size) if obj else -100,
                         obj.cell if obj else -100))
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
        subj_t = torch.tensor(subj, device=args.device)  # (B, 5): offset from end, present, color, size, cell
        return emb, mask, torch.tensor(answers, device=args.device), torch.stack(goals).to(args.device), subj_t

    hidden = lm.config.hidden_size
    subject_heads = torch.nn.ModuleList([torch.nn.Linear(hidden, k) for k in (2, len(COLORS), 2, 9)]).to(args.device)
    answer_heads = torch.nn.ModuleList([torch.nn.Linear(hidden, k) for k in (2, len(COLORS), 2, 9, len(COLORS), 2, 9)]
                                       ).to(args.device)
    opt = torch.optim.AdamW([*lm.parameters(), *head.parameters(), *subject_heads.parameters(),
                             *answer_heads.parameters()], lr=args.lr)

    from rlaifv.engines.packing import collate_packs, pack

    def packed_batch(chunk):
        """Rows of `per_row` questions per scene; returns embeddings, mask, positions, and per-question targets."""
        packs, answers, subj, kinds_ = [], [], [], []
        prefix = list(encode_prompt(tok, "Q", 9))
        prefix = prefix[: prefix.index(image) + 9 + 1]  # <s> USER: <image>x9 "\n" -- shared by every question
        for r, s in enumerate(chunk):
            qs = [q for q in sample_questions(s, rng, 4 * args.per_row) if q.kind in args.kinds]
            qs = qs[: args.per_row]
            suffixes = []
            for q in qs:
                full = list(encode_prompt(tok, q.question, 9))
                suffixes.append(full[len(prefix):])
            p = pack(prefix, suffixes)
            for q, start, end in zip(qs, p.starts, p.ends):
                category = next(c for c in CATEGORIES if f" {c}" in q.question)
                obj = s.object_of(category)
                cat_at = start + p.input_ids[start : end + 1].index(wid(category))
                asked_color = next((list(COLORS).index(c) for c in COLORS if f" {c}?" in q.question), -100)
                asked_size = next((i for i, z in enumerate(("small", "large")) if f" {z}?" in q.question), -100)
                asked_cell = next((i for i, ph in sorted(enumerate(POSITION_PHRASES), key=lambda t: -len(t[1]))
                                   if f" {ph}?" in q.question), -100)
                subj.append((r, end, cat_at, int(obj is not None),
                             list(COLORS).index(obj.color) if obj else -100,
                             ("small", "large").index(obj.size) if obj else -100, obj.cell if obj else -100,
                             asked_color, asked_size, asked_cell))
                answers.append(yes if q.answer else no)
                kinds_.append(q.kind)
            packs.append(p)
        batch_ = collate_packs(packs, tok.pad_token_id, torch.float32, args.device)
        emb = embed(batch_["input_ids"])
        for i, s in enumerate(chunk):
            cells = torch.zeros(9, emb.shape[-1], device=args.device)
            for o in s.objects:
                cells[o.cell] = sum(embed.weight[wid(w)] for w in (o.category, o.color, o.size))
            if args.cell_position:
                for c in range(9):
                    cells[c] = cells[c] + sum(embed.weight[wid(w)] for w in cell_place[c])
            emb[i, batch_["input_ids"][i] == image] = cells
        kinds.clear()
        kinds.extend(kinds_)
        return emb, batch_, torch.tensor(answers, device=args.device), torch.tensor(subj, device=args.device)

    def packed_loss(chunk):
        emb, b, y, subj = packed_batch(chunk)
        out = lm(inputs_embeds=emb, attention_mask=b["attention_mask"], position_ids=b["position_ids"],
                 output_hidden_states=True)
        logits = head(out.last_hidden_state[subj[:, 0], subj[:, 1]])  # (Q, V) at each question's last token
        ce = torch.nn.functional.cross_entropy(logits, y)
        h = out.hidden_states[1][subj[:, 0], subj[:, 2]]  # (Q, H) at each question's category word
        sub = sum(torch.nn.functional.cross_entropy(hd(h), subj[:, 3 + j], ignore_index=-100)
                  for j, hd in enumerate(subject_heads))
        if args.answer_aux:
            h_end = out.hidden_states[-1][subj[:, 0], subj[:, 1]]  # (Q, H) at each question's last token
            ans = sum(torch.nn.functional.cross_entropy(hd(h_end), subj[:, 3 + j], ignore_index=-100)
                      for j, hd in enumerate(answer_heads))
            sub = sub + args.answer_aux / max(args.subject_aux, 1e-9) * ans
        return ce, sub, logits, y

    if args.per_row > 1:
        start = time.perf_counter()
        for step in range(args.steps):
            start_at = (step * args.batch) % (len(scenes) - args.batch)
            ce, sub, _, _ = packed_loss(scenes[start_at : start_at + args.batch])
            (ce + args.subject_aux * sub).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step % 100 == 0:
                print(f"step {step:5d}  verdict CE {ce.item():.3f}  subject {sub.item():.3f}  "
                      f"{time.perf_counter() - start:.0f} s", flush=True)
        with torch.no_grad():
            _, _, logits, y = packed_loss(held_out[: 8 * args.batch])
            right = ((logits[:, yes] > logits[:, no]) == (y == yes)).cpu().numpy()
            print(f"held-out accuracy (packed {args.per_row}/row, subject aux {args.subject_aux}, "
                  f"steps {args.steps}): {right.mean():.3f}")
            print("  by kind: " + ", ".join(f"{k} {right[np.array(kinds) == k].mean():.3f}" for k in args.kinds))
        return
    start = time.perf_counter()
    for step in range(args.steps):
        start_at = (step * args.batch) % (len(scenes) - args.batch)
        emb, mask, y, goal, subj = batch(scenes[start_at : start_at + args.batch])
        out = lm(inputs_embeds=emb, attention_mask=mask, output_hidden_states=True)
        logits = head(out.last_hidden_state[:, -1])  # (B, V)
        ce = torch.nn.functional.cross_entropy(logits, y)
        h1 = out.hidden_states[1][:, -1]  # (B, H): residual stream after the first layer
        aux = ((h1 - goal) ** 2).sum(-1).mean() / (goal**2).sum(-1).mean()
        loss = ce + args.aux_weight * aux
        sub = torch.zeros((), device=args.device)
        if args.subject_aux:
            rows_i = torch.arange(len(subj), device=args.device)
            h_subj = out.hidden_states[1][rows_i, emb.shape[1] - 1 - subj[:, 0]]  # (B, H) at the category word
            sub = sum(torch.nn.functional.cross_entropy(h(h_subj), subj[:, 1 + j], ignore_index=-100)
                      for j, h in enumerate(subject_heads))
            loss = loss + args.subject_aux * sub
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0:
            print(f"step {step:5d}  verdict CE {ce.item():.3f}  aux {aux.item():.3f}  subject {sub.item():.3f}  "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
    with torch.no_grad():
        emb, mask, y, _, _ = batch(held_out)
        logits = head(lm(inputs_embeds=emb, attention_mask=mask).last_hidden_state[:, -1])
        said_yes = logits[:, yes] > logits[:, no]
        print(f"held-out accuracy ({' '.join(args.kinds)}, cells={args.cells}, aux={args.aux_weight}, "
              f"layers={shape.text_layers}, lr={args.lr}, batch={args.batch}, steps={args.steps}): "
              f"{(said_yes == (y == yes)).float().mean().item():.3f}")
        right = (said_yes == (y == yes)).cpu().numpy()
        print("  by kind: " + ", ".join(f"{k} {right[np.array(kinds) == k].mean():.3f}" for k in args.kinds))


if __name__ == "__main__":
    main()
