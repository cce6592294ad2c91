"""The labeler's training rows: the judge's own token layout, and hop targets that point at the right tokens."""

from __future__ import annotations

import math

import torch
from transformers import AutoModelForImageTextToText

from rlaifv.engines.hf import HFEngine
from rlaifv.world.config import WorldConfig
from rlaifv.world.labeler import LookupHeads, collate_rows, labeler_loss, labeler_rows
from rlaifv.world.language import parse_mentions
from rlaifv.world.render import render
from rlaifv.world.scenes import COLORS, SIZES, sample_scenes


def _rows(micro_world, n_scenes=6, per_image=5):
    engine = HFEngine(str(micro_world.labeler))
    scenes = sample_scenes(0, "val", n_scenes)
    return engine, labeler_rows(scenes, engine.tokenizer, 9, per_image, seed=0)


def test_rows_are_the_judges_prompts_with_answers_and_exact_targets(micro_world):
    engine, rows = _rows(micro_world)
    tok = engine.tokenizer
    yes, no = (tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in ("Yes", "No"))
    for row in rows:
        ids = row.pack.input_ids
        prefix = ids[: row.pack.starts[0]]
        for start, end, at, facts in zip(row.pack.starts, row.pack.ends, row.subject_at, row.facts):
            question_ids = ids[start : end - 1]  # the question's prompt tokens; then the answer and EOS
            assert ids[end] == tok.eos_token_id and ids[end - 1] in (yes, no)
            text = tok.decode(question_ids).split("\n", 1)[-1].rsplit(" ASSISTANT:", 1)[0].strip()
            question = text.removesuffix(" Answer yes or no.")
            # the judge scores exactly prefix + question tokens for this question about this image
            (judged, _), = engine.encode_groups([(render(row.scene), [text])])
            assert judged[0] == prefix + question_ids
            claim = parse_mentions(question)[0]
            assert tok.decode([ids[at]]).strip() == claim.category  # the lookup hop reads the subject word
            obj = row.scene.object_of(claim.category)
            held = (1, list(COLORS).index(obj.color), SIZES.index(obj.size), obj.cell) if obj else (0, -100, -100, -100)
            asked = (list(COLORS).index(claim.color) if claim.color else -100,
                     SIZES.index(claim.size) if claim.size else -100,
                     claim.cell if claim.cell is not None else -100)
            assert facts == held + asked
            truth = bool(obj) and all(a == -100 or a == h for a, h in zip(asked, held[1:]))
            assert (ids[end - 1] == yes) == truth


def test_hop_losses_are_finite_and_reach_the_language_model(micro_world):
    engine, rows = _rows(micro_world, n_scenes=4)
    model = AutoModelForImageTextToText.from_pretrained(micro_world.labeler)
    heads = LookupHeads(model.config.text_config.hidden_size)
    batch, targets = collate_rows(rows, engine.tokenizer.pad_token_id, "cpu")
    cfg = WorldConfig.preset("micro").labeler_train
    loss, parts = labeler_loss(model, heads, batch, targets, cfg)
    assert all(math.isfinite(v) and v > 0 for v in parts.values())
    loss.backward()
    first_layer = model.model.language_model.layers[0].self_attn.q_proj.weight.grad
    assert first_layer is not None and torch.count_nonzero(first_layer) > 0
    assert all(p.grad is not None for p in heads.subject.parameters())
