"""Training the world's yes/no labeler: questions packed behind each image, both lookup hops supervised.

A yes/no question about an image is a two-hop lookup for a language model trained from scratch: the question's
subject ("fork") must find the image token whose features say fork, and the answer position must then gather what
was found there together with what the question asks ("red", "on the left") and compare them. Trained on the
one-bit verdict alone, a small model sits on a loss plateau at chance for thousands of steps (measured in
benchmarks/RESULTS.md). Two training-only linear heads give each hop its own dense signal:

- at the question's category word, after the first layer: what the image holds for that category (present? its
  color, size and cell) -- the lookup;
- at the question's last token, after the last layer: the same facts, plus the attributes the question asks about
  -- the gathering. The verdict itself is then a comparison of two operands side by side.

With both, the labeler learns every question kind within a few hundred steps. The heads are discarded; the saved
model is a plain LLaVA that answers " Yes" or " No".

Questions are packed behind their image (`engines.packing`): the judge's own layout, one vision pass and one
prompt prefix per image for several verdicts.

Its quality on held-out claims (`labeler_quality`; verdict = P_yes > P_no, a tie is a "no"):
- accuracy over all questions; hard_negative_accuracy over hard negatives (absent partners, wrong attributes);
- false_rejection_rate: true claims judged "no" / true claims. A falsely rejected true claim makes a clean response
  look hallucinated, so this rate bounds how good any preference pair can be.
The bootstrap measures it on `val` scenes and trains on while it is too low; the demo reports it on `test` scenes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rlaifv.engines.packing import Pack, collate_packs, common_prefix_length, pack
from rlaifv.progress import progress
from rlaifv.world.config import LabelerTrainConfig, WorldConfig
from rlaifv.world.language import YesNoQuestion, sample_questions, with_suffix
from rlaifv.world.models import IMAGE_TOKEN, encode_prompt, pixel_values, word_token_id
from rlaifv.world.render import render
from rlaifv.world.scenes import CATEGORIES, COLORS, N_CELLS, SIZES, Scene, sample_scenes
from rlaifv.world.training import adamw, freeze_aligned, lr_factor, optimizer_step

# Classes of each fact a head reads: present, color, size, cell (subject); then asked color, size, cell.
SUBJECT_CLASSES = (2, len(COLORS), len(SIZES), N_CELLS)
ANSWER_CLASSES = SUBJECT_CLASSES + (len(COLORS), len(SIZES), N_CELLS)


@dataclass(frozen=True)
class LabelerRow:
    """One training row: an image and its questions packed behind it, with every target the loss needs."""

    scene: Scene
    pack: Pack  # prefix (image + chat opening), then per question: question tokens, answer, EOS
    subject_at: tuple[int, ...]  # row index of each question's category word
    facts: tuple[tuple[int, ...], ...]  # per question, one class per ANSWER_CLASSES entry; -100 = unknown/not asked


def held_facts(scene: Scene, category: str) -> tuple[int, int, int, int]:
    """What the image holds for a category, one class per SUBJECT_CLASSES entry: present, color, size, cell (-100
    for the attributes of an absent one)."""
    obj = scene.object_of(category)
    return (1, list(COLORS).index(obj.color), SIZES.index(obj.size), obj.cell) if obj else (0, -100, -100, -100)


def question_facts(scene: Scene, q: YesNoQuestion) -> tuple[int, ...]:
    """What the image holds for the question's subject, and what the question asks (-100 where nothing)."""
    held = held_facts(scene, q.claim.category)
    asked = (
        list(COLORS).index(q.claim.color) if q.claim.color else -100,
        SIZES.index(q.claim.size) if q.claim.size else -100,
        q.claim.cell if q.claim.cell is not None else -100,
    )
    return held + asked


def labeler_rows(scenes: list[Scene], tokenizer, n_image_tokens: int, per_image: int, seed: int) -> list[LabelerRow]:
    """Balanced questions (half true, hard negatives among the false) packed behind each scene's image."""
    rng = np.random.default_rng([seed, 2])
    answer_ids = {a: word_token_id(tokenizer, a) for a in ("Yes", "No")}
    category_ids = {c: word_token_id(tokenizer, c) for c in CATEGORIES}
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    prompt_cache: dict[str, list[int]] = {}
    rows = []
    for scene in scenes:
        questions = sample_questions(scene, rng, per_image)
        texts = [with_suffix(q.question, rng) for q in questions]
        for t in texts:
            if t not in prompt_cache:
                prompt_cache[t] = list(encode_prompt(tokenizer, t, n_image_tokens))
        prompts = [prompt_cache[t] for t in texts]
        # The shared prefix ends with the image and the line break after it; questions may share more words ("Is
        # there a fork?" twice), but those belong to each question.
        cut = min(common_prefix_length(prompts), prompts[0].index(image_id) + n_image_tokens + 1)
        suffixes = [p[cut:] + [answer_ids["Yes" if q.answer else "No"], tokenizer.eos_token_id]
                    for p, q in zip(prompts, questions)]
        packed = pack(prompts[0][:cut], suffixes)
        subject_at = []
        for q, start, end in zip(questions, packed.starts, packed.ends):
            words = packed.input_ids[start : end + 1]
            subject_at.append(start + words.index(category_ids[q.claim.category]))
        rows.append(LabelerRow(scene, packed, tuple(subject_at), tuple(question_facts(scene, q) for q in questions)))
    return rows


def collate_rows(rows: list[LabelerRow], pad_id: int, device: str) -> dict[str, torch.Tensor]:
    """Packed rows as model inputs, plus per-question indices and targets (Q = questions in the batch)."""
    batch = collate_packs([r.pack for r in rows], pad_id, torch.float32, device)
    batch["pixel_values"] = pixel_values([render(r.scene) for r in rows], device)  # (B, 3, H, W)
    row_of, answer_at, subject_at, facts, answers = [], [], [], [], []
    for i, r in enumerate(rows):
        for end, at, f in zip(r.pack.ends, r.subject_at, r.facts):
            row_of.append(i)
            answer_at.append(end - 2)  # the question's last token; the answer token follows, then EOS
            subject_at.append(at)
            facts.append(f)
            answers.append(r.pack.input_ids[end - 1])
    targets = {
        "row": torch.tensor(row_of), "answer_at": torch.tensor(answer_at), "subject_at": torch.tensor(subject_at),
        "facts": torch.tensor(facts), "answer": torch.tensor(answers),  # (Q,), (Q,), (Q,), (Q, 7), (Q,)
    }
    return batch, {k: v.to(device) for k, v in targets.items()}


def read_outs(hidden: int, classes: tuple[int, ...]) -> nn.ModuleList:
    """One training-only linear read-out per fact, from a hidden state (H) to that fact's classes."""
    return nn.ModuleList(nn.Linear(hidden, k) for k in classes)


def facts_loss(heads: nn.ModuleList, h: torch.Tensor, facts: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of each read-out against its fact, summed over the facts; classes marked -100 carry no loss.

    h: (Q, H); facts: (Q, >= len(heads)). With no fact to read, a zero that keeps the graph.
    """
    losses = [nn.functional.cross_entropy(head(h), facts[:, j], ignore_index=-100, reduction=reduction)
              for j, head in enumerate(heads) if (facts[:, j] != -100).any()]
    return torch.stack(losses).sum() if losses else h.sum() * 0.0


class LookupHeads(nn.Module):
    """Training-only linear read-outs of the two hops (see the module docstring)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.subject = read_outs(hidden, SUBJECT_CLASSES)
        self.answer = read_outs(hidden, ANSWER_CLASSES)


def labeler_loss(model, heads: LookupHeads, batch: dict, t: dict, cfg: LabelerTrainConfig) -> tuple[torch.Tensor, dict]:
    """Verdict and EOS cross-entropy, plus the two hop losses; returns the total and its parts."""
    out = model(**batch, output_hidden_states=True)
    logits = out.logits  # (B, T, V)
    verdict = nn.functional.cross_entropy(logits[t["row"], t["answer_at"]], t["answer"])
    eos_target = torch.full_like(t["answer"], model.generation_config.eos_token_id)
    eos = nn.functional.cross_entropy(logits[t["row"], t["answer_at"] + 1], eos_target)
    hidden = out.hidden_states  # (L + 1) x (B, T, H)
    subject = facts_loss(heads.subject, hidden[1][t["row"], t["subject_at"]], t["facts"])
    answer = facts_loss(heads.answer, hidden[-1][t["row"], t["answer_at"]], t["facts"])
    total = verdict + eos + cfg.subject_weight * subject + cfg.answer_weight * answer
    return total, {"verdict": verdict.item(), "subject": subject.item(), "answer": answer.item()}


def train_labeler(model, rows: list[LabelerRow], cfg: LabelerTrainConfig, seed: int, pad_id: int,
                  device: str = "cpu") -> list[float]:
    """One pass over the rows with AdamW, warmup and cosine decay; returns the verdict loss per step."""
    torch.manual_seed(seed)
    heads = LookupHeads(model.config.text_config.hidden_size).to(device)
    if cfg.freeze_vision:
        freeze_aligned(model)
    trained = nn.ModuleList([model, heads])  # one optimizer and one gradient clip over the model and its heads
    order = np.random.default_rng([seed, 3]).permutation(len(rows))
    steps = math.ceil(len(rows) / cfg.batch_size)
    params = [p for p in trained.parameters() if p.requires_grad]
    opt = adamw(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, cfg.warmup_steps))
    model.train()
    losses: list[float] = []
    with progress("training labeler", steps) as bar:
        for step in range(steps):
            chunk = [rows[i] for i in order[step * cfg.batch_size : (step + 1) * cfg.batch_size]]
            batch, targets = collate_rows(chunk, pad_id, device)
            loss, parts = labeler_loss(model, heads, batch, targets, cfg)
            optimizer_step(trained, loss, opt, sched)
            losses.append(parts["verdict"])
            bar.advance(1, status=f"verdict {np.mean(losses[-20:]):.3f} lookup {parts['subject']:.3f}")
    model.eval()
    model.requires_grad_(True)
    return losses


# ---------------------------------------------------------------- quality on held-out claims


def labeler_metrics(questions: Sequence[YesNoQuestion], probs: Sequence[tuple[float, float]]) -> dict[str, float]:
    """Accuracy, hard-negative accuracy and false-rejection rate of verdicts (P_yes, P_no) on their questions."""
    if len(questions) != len(probs):
        raise ValueError(f"{len(questions)} questions but {len(probs)} verdicts")
    said_yes = [p_yes > p_no for p_yes, p_no in probs]
    correct = [s == q.answer for s, q in zip(said_yes, questions)]
    hard = [c for c, q in zip(correct, questions) if q.hard]
    true_claims = [s for s, q in zip(said_yes, questions) if q.answer]
    return {
        "accuracy": sum(correct) / len(correct),
        "hard_negative_accuracy": sum(hard) / len(hard) if hard else float("nan"),
        "false_rejection_rate": (len(true_claims) - sum(true_claims)) / len(true_claims) if true_claims else 0.0,
        "n_questions": len(questions),
        "n_hard_negatives": len(hard),
    }


def labeler_quality(labeler: Path, world: WorldConfig, split: str, n_scenes: int, per_scene: int, batch: int,
                    device: str = "cpu") -> dict[str, float]:
    """`labeler_metrics` of a saved labeler on `per_scene` balanced yes/no claims about each of a split's first
    `n_scenes` scenes, asked `batch` at a time."""
    from rlaifv.engines.hf import HFEngine

    scenes = sample_scenes(world.seed, split, n_scenes, world.prior)
    rng = np.random.default_rng([world.seed, 99])
    items = [(s, q) for s in scenes for q in sample_questions(s, rng, per_scene)]
    engine = HFEngine(labeler, device=device)
    probs: list[tuple[float, float]] = []
    with progress(f"judging {split} claims", len(items)) as bar:
        for start in range(0, len(items), batch):
            chunk = items[start : start + batch]
            probs += engine.yes_no([render(s) for s, _ in chunk], [with_suffix(q.question, rng) for _, q in chunk])
            bar.advance(len(chunk))
    return labeler_metrics([q for _, q in items], probs)
