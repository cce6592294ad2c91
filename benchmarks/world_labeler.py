"""The world labeler alone: shared vision alignment, labeler training, held-out accuracy; no policy.

    python benchmarks/world_labeler.py --seed 0 [--threads 1] [--vision '{"category_weight": 0}'] [--labeler '{}']

Prints how well the aligned image tokens name each object (nearest word embedding of the category, color and size
after removing the cell's place words, on 300 `val` scenes), the labeler's training time, and its accuracy,
hard-negative accuracy and false-rejection rate on 500 `test` scenes. `--vision` and `--labeler` override fields of
VisionAlignConfig and LabelerTrainConfig (JSON), for ablations.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def alignment_quality(model, tokenizer, seed: int) -> dict[str, float]:
    """Share of objects whose aligned image token is nearest to the right category, color and size word."""
    from rlaifv.world.language import CELL_WORDS
    from rlaifv.world.models import pixel_values, word_token_id
    from rlaifv.world.render import render
    from rlaifv.world.scenes import CATEGORIES, COLORS, SIZES, sample_scenes

    embed = model.get_input_embeddings().weight.detach()  # (V, H)
    scenes = sample_scenes(seed, "val", 300)
    with torch.no_grad():
        feats = model.get_image_features(pixel_values=pixel_values([render(s) for s in scenes])).pooler_output
    feats = torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats  # (N, 9, H)
    place = torch.stack([embed[[word_token_id(tokenizer, w) for w in ws]].sum(0) for ws in CELL_WORDS])  # (9, H)
    vocab = {"category": CATEGORIES, "color": tuple(COLORS), "size": SIZES}
    words = {k: embed[[word_token_id(tokenizer, w) for w in v]] for k, v in vocab.items()}
    right = dict.fromkeys(vocab, 0)
    n = 0
    for i, scene in enumerate(scenes):
        for obj in scene.objects:
            rest = feats[i, obj.cell] - place[obj.cell]  # (H,)
            n += 1
            for kind, table in words.items():
                right[kind] += vocab[kind][int((table @ rest).argmax())] == getattr(obj, kind)
    return {kind: round(v / n, 3) for kind, v in right.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vision", default="{}", help="JSON overrides of VisionAlignConfig")
    ap.add_argument("--labeler", default="{}", help="JSON overrides of LabelerTrainConfig")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from rlaifv.config import EvalConfig
    from rlaifv.eval.world import evaluate_labeler
    from rlaifv.world.bootstrap import align_vision, train_model, train_scenes
    from rlaifv.world.config import WorldConfig
    from rlaifv.world.models import build_model, build_tokenizer

    cfg = WorldConfig(seed=args.seed)
    cfg = cfg.model_copy(update={"vision": cfg.vision.model_copy(update=json.loads(args.vision)),
                                 "labeler_train": cfg.labeler_train.model_copy(update=json.loads(args.labeler))})
    tokenizer = build_tokenizer(cfg.seed, cfg.tokenizer_vocab)
    policy_scenes, labeler_scenes = train_scenes(cfg)
    aligned, vision_stats = align_vision(cfg, tokenizer, cfg.labeler_model, policy_scenes)
    probe = build_model(tokenizer, cfg.labeler_model, 0)
    probe.load_state_dict(aligned, strict=False)
    quality = alignment_quality(probe, tokenizer, cfg.seed)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        stats = train_model(cfg, tokenizer, "labeler", Path(tmp) / "labeler", aligned, labeler_scenes)
        train_s = time.perf_counter() - start
        metrics = evaluate_labeler(Path(tmp) / "labeler", cfg, EvalConfig(n_scenes=500))
    print(json.dumps({"seed": args.seed, "alignment": {**vision_stats, "decoded": quality},
                      "labeler_train": {**stats, "wall_s": round(train_s, 1)}, "labeler": metrics}, indent=1))


if __name__ == "__main__":
    main()
