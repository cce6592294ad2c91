"""`rlaifv world bootstrap`: train the world's base policy and labeler from scratch, and cache them.

- The **base policy** learns to describe scenes from the world captioner's noisy captions, so it learns the habit of
  adding absent partner objects: it hallucinates from a co-occurrence prior, as real VLMs do.
- The **labeler** learns balanced yes/no questions with hard negatives (absent partners, wrong colors, sizes and
  neighbouring positions): discrimination is easier than generation, so it is accurate where the policy is not.

Both read images through one vision alignment, which is checked by its final error (`align_vision`); the labeler is
then checked on held-out `val` claims (`train_checked_labeler`). Each check trains again when it fails, because
every preference pair the rounds build inherits what these two models get wrong.

Both are cached under a key of (config, seed, package version); the world's claim splitter joins them there
the first time something asks for it (`WorldModels.splitter`). A build happens in a temporary folder that is
renamed into place only when complete, so an interrupted bootstrap never leaves a model that a later run picks up;
a cached folder that fails to load is reported and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rlaifv import __version__
from rlaifv.files import building, publish_dir
from rlaifv.progress import log, progress
from rlaifv.world.config import PolicyTrainConfig, TinyVLMConfig, VisionAlignConfig, WorldConfig
from rlaifv.world.labeler import (
    SUBJECT_CLASSES,
    facts_loss,
    held_facts,
    labeler_quality,
    labeler_rows,
    read_outs,
    train_labeler,
)
from rlaifv.world.language import CELL_WORDS, DESCRIBE_INSTRUCTIONS, noisy_caption, parse_mentions
from rlaifv.world.models import (
    build_model,
    build_processor,
    build_tokenizer,
    encode_prompt,
    num_image_tokens,
    pixel_values,
    save_vlm,
    word_token_id,
)
from rlaifv.world.render import render
from rlaifv.world.scenes import CATEGORIES, COLORS, N_CELLS, SIZES, Scene, sample_scenes
from rlaifv.world.training import adamw, apply_gradients, freeze_aligned, lr_factor, text_batch

MANIFEST = "bootstrap.json"
CHECK_QUESTIONS = 6  # balanced yes/no claims per `val` scene in the labeler's check (as the demo's report asks)
SPLITTER, SPLITTER_STATS = "splitter", "train.json"  # the splitter's folder under a world's root, its training stats
# Part of the cache key: raised whenever a change to the world's data or training changes what a bootstrap builds,
# so a cache filled by an older build of the same package version is never picked up.
BOOTSTRAP_REVISION = 4


@dataclass(frozen=True, slots=True)
class Example:
    """One supervised example: a scene's image, the prompt's token ids and the target's token ids."""

    scene: Scene
    prompt_ids: tuple[int, ...]
    target_ids: tuple[int, ...]  # response tokens + EOS; the only tokens with a loss
    # entry j: the facts the state at target token j - 1 reads out (`sentence_facts`); () = not supervised
    facts: tuple[tuple[int, int, int, int], ...] = ()


@dataclass(frozen=True)
class WorldModels:
    """Where a bootstrapped world's models live."""

    root: Path
    policy: Path
    labeler: Path
    manifest: dict
    built: bool = False  # True when this call trained the models, False when they came from the cache

    @property
    def splitter(self) -> Path:
        """The tiny chat LM that splits world responses into claims (the `llm` splitter), trained into the cache on
        first use: the world's own settings split with the rules, so a demo never waits for it."""
        return world_splitter(self.root, WorldConfig.model_validate(self.manifest["config"]))


def cache_root() -> Path:
    """$RLAIFV_CACHE, else ~/.cache/rlaifv."""
    return Path(os.environ.get("RLAIFV_CACHE", Path.home() / ".cache" / "rlaifv"))


def cache_key(cfg: WorldConfig) -> str:
    payload = json.dumps(
        {"config": cfg.model_dump(mode="json"), "version": __version__, "revision": BOOTSTRAP_REVISION}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- data


def _encode_targets(tokenizer, texts: list[str]) -> list[tuple[int, ...]]:
    # Responses follow "ASSISTANT:" after one space, as the chat template renders them.
    ids = tokenizer([" " + t for t in texts], add_special_tokens=False)["input_ids"]
    return [(*row, tokenizer.eos_token_id) for row in ids]


def train_scenes(cfg: WorldConfig) -> tuple[list[Scene], list[Scene]]:
    """The train split, sampled once: the policy's scenes (which the vision alignment also draws from), then the
    labeler's -- a different slice, so the two models never share scenes by accident."""
    n_policy = cfg.policy_train.scenes
    scenes = sample_scenes(cfg.seed, "train", n_policy + cfg.labeler_train.scenes, cfg.prior)
    return scenes[:n_policy], scenes[n_policy:]


def policy_examples(cfg: WorldConfig, tokenizer, scenes: list[Scene]) -> list[Example]:
    """`examples_per_scene` noisy captions per scene, each behind a describe instruction drawn at random; with
    `lookup_weight`, each caption token also carries the facts of its sentence's object (`sentence_facts`)."""
    rng = np.random.default_rng([cfg.seed, 1])
    n_img = num_image_tokens(cfg.policy_model)
    prompts = [encode_prompt(tokenizer, q, n_img) for q in DESCRIBE_INSTRUCTIONS]
    rows = []
    for scene in scenes:
        for _ in range(cfg.policy_train.examples_per_scene):
            rows.append((scene, int(rng.integers(len(prompts))), noisy_caption(scene, rng, cfg.noise)))
    targets = _encode_targets(tokenizer, [r[2] for r in rows])
    if not cfg.policy_train.lookup_weight:
        return [Example(s, prompts[i], t) for (s, i, _), t in zip(rows, targets)]
    (period,) = tokenizer(".", add_special_tokens=False)["input_ids"]  # a sentence's end, right after its last word
    names = {word_token_id(tokenizer, c) for c in CATEGORIES}
    return [Example(s, prompts[i], t, sentence_facts(s, caption, t, period, names))
            for (s, i, caption), t in zip(rows, targets)]


def sentence_facts(scene: Scene, caption: str, target_ids: tuple[int, ...], period_id: int, name_ids: set[int]
                   ) -> tuple[tuple[int, int, int, int], ...]:
    """Per target token j, the facts (`held_facts`) that the state at token j - 1 is trained to read out: those of
    the object its sentence names, from the name on to the sentence's period; -100 elsewhere. () when sentences and
    named objects do not line up one to one ("The image is empty.").

    A world caption names one object per sentence and ends every sentence with a period, its own token. Before the
    name, which object comes next is a choice, not a lookup, so those states are left free.
    """
    named = [m.category for m in parse_mentions(caption)]
    if len(named) != target_ids.count(period_id) or not named:
        return ()
    facts, k, seen = [(-100,) * 4], 0, False  # entry 0: the last prompt token's state
    for token in target_ids[:-1]:
        seen = seen or token in name_ids
        facts.append(held_facts(scene, named[k]) if seen else (-100,) * 4)
        if token == period_id:
            k, seen = k + 1, False
    return tuple(facts)


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch with labels only on target tokens, and the scenes' images; with facts, also "facts"
    (B, T, 4): at the position that predicts a target token, the facts of that token's sentence (-100 elsewhere)."""
    batch = text_batch([(e.prompt_ids, e.target_ids) for e in examples], pad_id)
    batch["pixel_values"] = pixel_values([render(e.scene) for e in examples])  # (B, 3, H, W)
    if any(e.facts for e in examples):
        facts = torch.full((*batch["input_ids"].shape, 4), -100, dtype=torch.long)  # (B, T, 4)
        for i, e in enumerate(examples):
            if e.facts:
                start = len(e.prompt_ids) - 1  # the last prompt position predicts the first target token
                facts[i, start : start + len(e.facts)] = torch.tensor(e.facts)
        batch["facts"] = facts
    return batch


class SentenceLookupHeads(torch.nn.Module):
    """Training-only read-outs for the policy, discarded after training: after the first layer, at the name of each
    caption sentence's object and after it, what the image holds for that object (present, color, size, cell).

    Captions alone teach a position only at the few tokens that state one, and objects come in reading order, so the
    policy learnt to guess the next position from the previous sentence's instead of looking it up: its stated
    positions were wrong 41 % of the time (seed 0, 300 `test` scenes, vision frozen), mostly one cell off in reading
    order, and errors carried over from sentence to sentence. The read-outs give the lookup of the named object a
    dense signal, the labeler's trick (`rlaifv.world.labeler`) applied to captions: at weight 0.3, 6 % wrong
    positions and 3 % wrong sizes. What the policy writes is still learnt from the noisy captions alone, habits
    included. Read-outs after the last layer as well cost the policy its object names (CHAIRi 0.13 -> 0.48).
    """

    def __init__(self, hidden: int):
        super().__init__()
        self.heads = read_outs(hidden, SUBJECT_CLASSES)

    def loss(self, hidden_states: tuple[torch.Tensor, ...], facts: torch.Tensor, n_items: int) -> torch.Tensor:
        """Summed cross-entropies over the supervised positions, divided by the whole batch's count of them."""
        at = facts[..., 0] != -100  # (B, T)
        return facts_loss(self.heads, hidden_states[1][at], facts[at], reduction="sum") / max(1, n_items)


# ---------------------------------------------------------------- training


def cell_targets(scenes: list[Scene]) -> dict[str, np.ndarray]:
    """Per grid cell: category (0 = empty), color and size indices; -100 where a cell is empty. Each (N, 9) int64,
    built once for all scenes so a training step only indexes rows."""
    n = len(scenes)
    cat = np.zeros((n, N_CELLS), dtype=np.int64)
    color = np.full((n, N_CELLS), -100, dtype=np.int64)
    size = np.full((n, N_CELLS), -100, dtype=np.int64)
    category_index = {c: i + 1 for i, c in enumerate(CATEGORIES)}
    color_index = {c: i for i, c in enumerate(COLORS)}
    size_index = {s: i for i, s in enumerate(SIZES)}
    for i, scene in enumerate(scenes):
        for o in scene.objects:
            cat[i, o.cell] = category_index[o.category]
            color[i, o.cell] = color_index[o.color]
            size[i, o.cell] = size_index[o.size]
    return {"category": cat, "color": color, "size": size}


def pretrain_vision(
    model, tokenizer, scenes: list[Scene], cfg: VisionAlignConfig, seed: int, device: str = "cpu"
) -> list[float]:
    """Map each image token into the language model's word-embedding space before the LM learns to read it.

    The world's few-second version of LLaVA's feature-alignment stage. One image token covers one grid cell; it is
    regressed onto the sum of the (fixed) input embeddings of the words for what the cell holds -- "red" + "small"
    + "fork" -- and onto zero for an empty cell; with `cfg.positions`, the cell's place words ("top" + "left")
    are added to every cell's target. Image tokens then look to the LM like the words that describe them,
    at the same scale as text, so it learns to look things up in the image as fast as it would in text.
    """
    torch.manual_seed(seed)
    embed = model.get_input_embeddings().weight.detach()  # (V, H), a fixed target
    ids = {kind: torch.tensor([word_token_id(tokenizer, w) for w in words], device=device)
           for kind, words in (("category", CATEGORIES), ("color", list(COLORS)), ("size", SIZES))}
    # (9, H): each cell's place words summed, added to every cell's target when positions are aligned too
    place = torch.stack([embed[[word_token_id(tokenizer, w) for w in words]].sum(0) for words in CELL_WORDS])
    place = place if cfg.positions else torch.zeros_like(place)
    # (H, 13): a training-only read-out of each cell's category (0 = empty) from its image token
    category_head = torch.nn.Linear(embed.shape[1], len(CATEGORIES) + 1).to(device)
    params = [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters(),
              *category_head.parameters()]
    opt = adamw(params, lr=cfg.lr, weight_decay=0.0)
    rng = np.random.default_rng([seed, 4])
    all_targets = cell_targets(scenes)  # each (N, 9)
    losses: list[float] = []
    with progress("vision alignment", cfg.steps) as bar:
        for _ in range(cfg.steps):
            picked = rng.integers(len(scenes), size=cfg.batch_size)
            images = pixel_values([render(scenes[i]) for i in picked], device)
            feats = model.get_image_features(pixel_values=images).pooler_output
            feats = torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats  # (B, 9, H)
            targets = {k: torch.from_numpy(v[picked]) for k, v in all_targets.items()}  # each (B, 9)
            occupied = (targets["category"] > 0).to(device)  # (B, 9)
            goal = place.expand_as(feats).clone()  # (B, 9, H): empty cells map to their place words (or zero)
            cat = embed[ids["category"][(targets["category"] - 1).clamp(min=0).to(device)]]  # (B, 9, H)
            color = embed[ids["color"][targets["color"].clamp(min=0).to(device)]]  # (B, 9, H)
            size = embed[ids["size"][targets["size"].clamp(min=0).to(device)]]  # (B, 9, H)
            goal[occupied] += (cat + color + size)[occupied]
            # relative error, so the loss reads the same whatever the embedding scale
            loss = ((feats - goal) ** 2).sum(-1).mean() / (goal**2).sum(-1)[occupied].mean()
            if cfg.category_weight:
                logits = category_head(feats)  # (B, 9, 13)
                ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets["category"].flatten().to(device))
                (loss + cfg.category_weight * ce).backward()
            else:
                loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.advance(1, status=f"rel. error {np.mean(losses[-20:]):.3f}")
    return losses


def micro_batches(examples: list[Example], n: int) -> list[list[Example]]:
    """The batch sorted by length and cut into at most n contiguous parts, so each part pads only to its own
    longest example."""
    ordered = sorted(examples, key=lambda e: len(e.prompt_ids) + len(e.target_ids))
    size = math.ceil(len(ordered) / n)
    return [ordered[lo : lo + size] for lo in range(0, len(ordered), size)]


def part_loss(model, heads: SentenceLookupHeads | None, weight: float, part: list[Example], batch: list[Example],
              pad_id: int, device: str = "cpu") -> tuple[float, torch.Tensor]:
    """One micro-batch's share of its batch's loss: (the caption loss's share, the total to backpropagate).

    Both the caption loss and the read-outs' loss are sums over this part divided by the whole batch's counts, so
    the parts' gradients add up to the batch's.
    """
    n_targets = sum(len(e.target_ids) for e in batch)  # tokens with a loss in the whole batch
    inputs = {k: v.to(device) for k, v in collate(part, pad_id).items()}
    facts = inputs.pop("facts", None)  # (B, T, 4) or None
    out = model(**inputs, num_items_in_batch=n_targets, output_hidden_states=heads is not None)
    total = out.loss
    if heads is not None and facts is not None:
        n_facts = sum(sum(f[0] != -100 for f in e.facts) for e in batch)  # states the read-outs supervise
        total = total + weight * heads.loss(out.hidden_states, facts, n_facts)
    return out.loss.item(), total


def train_sft(
    model, examples: list[Example], cfg: PolicyTrainConfig, seed: int, pad_id: int, name: str = "policy",
    device: str = "cpu",
) -> list[float]:
    """One pass over the examples with AdamW, linear warmup and cosine decay; returns the caption loss per step.

    Each step's batch runs as `cfg.micro_batches` length-sorted forwards (`part_loss`), whose gradients add up to
    the whole batch's: the split saves padding and changes nothing else. With `cfg.lookup_weight`, the read-outs of
    `SentenceLookupHeads` train beside the model; with `cfg.freeze_vision`, the aligned weights stay as they are.
    """
    torch.manual_seed(seed)
    order = np.random.default_rng([seed, 3]).permutation(len(examples))
    steps = math.ceil(len(examples) / cfg.batch_size)
    if cfg.freeze_vision:
        freeze_aligned(model)
    heads = SentenceLookupHeads(model.config.text_config.hidden_size) if cfg.lookup_weight else None
    trained = torch.nn.ModuleList([model, heads]) if heads is not None else model
    params = [p for p in trained.parameters() if p.requires_grad]
    opt = adamw(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, cfg.warmup_steps))
    model.train()
    losses: list[float] = []
    with progress(f"training {name}", steps) as bar:
        for step in range(steps):
            here = [examples[i] for i in order[step * cfg.batch_size : (step + 1) * cfg.batch_size]]
            loss_sum = 0.0
            for part in micro_batches(here, cfg.micro_batches):
                caption, total = part_loss(model, heads, cfg.lookup_weight, part, here, pad_id, device)
                total.backward()
                loss_sum += caption
            apply_gradients(trained, opt, sched)
            losses.append(loss_sum)
            bar.advance(1, status=f"loss {np.mean(losses[-20:]):.3f}")
    model.eval()
    model.requires_grad_(True)
    return losses


# Weights the alignment stage produces; both models start from them (tied, so the LM head follows the embeddings).
ALIGNED_PREFIXES = ("model.vision_tower.", "model.multi_modal_projector.", "model.language_model.embed_tokens.")


def alignment_seed(cfg: WorldConfig, attempt: int) -> int:
    """The seed of the alignment's attempt `attempt` (0 = the first; each restart adds 100)."""
    return cfg.seed * 1000 + 4 + 100 * attempt


def align_vision(
    cfg: WorldConfig, tokenizer, model_cfg: TinyVLMConfig, scenes: list[Scene], device: str = "cpu"
) -> tuple[dict, dict]:
    """Run the alignment stage once for a model shape on the policy's train scenes; returns the aligned weights and
    stats.

    An alignment whose final relative error is above `cfg.vision.max_rel_error` starts again from a fresh
    initialisation (at most `cfg.vision.max_restarts` times), and the attempt with the lowest error is kept. Some
    initialisations settle with the cells' positions half learnt; both models read the image through this stage, so
    such a world's labeler cannot be trained past it (`RESULTS.md`: the labeler's accuracy followed the alignment's
    error, not its own training) and its policy states more wrong positions.
    """
    start = time.perf_counter()
    best: tuple[float, dict] | None = None
    errors: list[float] = []
    for attempt in range(cfg.vision.max_restarts + 1):
        if attempt:
            log(f"[yellow]world vision alignment: relative error {errors[-1]:.3f} is above "
                f"{cfg.vision.max_rel_error}; starting again from a fresh initialisation (attempt {attempt + 1})")
        seed = alignment_seed(cfg, attempt)
        model = build_model(tokenizer, model_cfg, seed).to(device)
        losses = pretrain_vision(model, tokenizer, scenes, cfg.vision, seed, device)
        errors.append(float(np.mean(losses[-20:])) if losses else 0.0)  # 0 steps: nothing to check
        if best is None or errors[-1] < best[0]:
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
                     if k.startswith(ALIGNED_PREFIXES)}
            best = (errors[-1], state)
        if errors[-1] <= cfg.vision.max_rel_error:
            break
    else:
        log(f"[yellow]world vision alignment: relative error still above {cfg.vision.max_rel_error} after "
            f"{cfg.vision.max_restarts} restarts; keeping the lowest ({best[0]:.3f}), both models will read images "
            f"less well")
    stats = {"steps": cfg.vision.steps * len(errors), "final_rel_error": best[0], "attempts": errors,
             "seconds": round(time.perf_counter() - start, 1)}
    return best[1], stats


def train_model(
    cfg: WorldConfig, tokenizer, role: str, out: Path, aligned: dict, scenes: list[Scene], device: str = "cpu"
) -> dict:
    """Build one of the world's models ("policy" or "labeler") from the aligned weights, train it on its train
    scenes (`train_scenes`), save it to `out`."""
    model_cfg = cfg.policy_model if role == "policy" else cfg.labeler_model
    train_cfg = cfg.policy_train if role == "policy" else cfg.labeler_train
    seed = cfg.seed * 1000 + (1 if role == "policy" else 2)
    start = time.perf_counter()
    if role == "policy":
        examples = policy_examples(cfg, tokenizer, scenes)
    else:
        examples = labeler_rows(scenes, tokenizer, num_image_tokens(model_cfg),
                                train_cfg.examples_per_scene, cfg.seed)
    model = build_model(tokenizer, model_cfg, seed)
    unexpected = model.load_state_dict(aligned, strict=False).unexpected_keys
    if unexpected:
        raise ValueError(f"aligned weights do not fit the {role} model: {unexpected[:3]}")
    model.to(device)
    processor = build_processor(tokenizer, model_cfg)
    checks: list[dict] = []
    if role == "policy":
        losses = train_sft(model, examples, train_cfg, seed, tokenizer.pad_token_id, device=device)
        save_vlm(model.cpu(), processor, out)
    else:
        losses, checks = train_checked_labeler(cfg, tokenizer, model, examples, processor, out, device)
    stats = {
        "examples": len(examples),
        "steps": len(losses),
        "final_loss": float(np.mean(losses[-20:])),
        "seconds": round(time.perf_counter() - start, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return {**stats, "checks": checks} if checks else stats


def train_checked_labeler(cfg: WorldConfig, tokenizer, model, rows: list, processor, out: Path, device: str = "cpu"
                          ) -> tuple[list[float], list[dict]]:
    """Train the labeler, save it to `out` and check it on `val` claims (`labeler_quality`); while its accuracy is
    below `min_accuracy`, train one more pass on a fresh slice of the train split (a new schedule, new scenes) and
    check again, at most `max_extra_passes` times. Returns the verdict loss per step and every check.

    A labeler's training can end before its lookup has settled on some seeds; every pair the rounds build inherits
    its mistakes, so a bootstrap that measures nothing would hand a bad labeler to every run of that world.
    """
    train_cfg = cfg.labeler_train
    seed = cfg.seed * 1000 + 2
    losses: list[float] = []
    checks: list[dict] = []
    for extra in range(train_cfg.max_extra_passes + 1):
        if extra:
            log(f"[yellow]world labeler: accuracy {checks[-1]['accuracy']:.3f} on held-out `val` claims is below "
                f"{train_cfg.min_accuracy}; training pass {extra + 1} on fresh scenes")
            rows = labeler_rows(extra_labeler_scenes(cfg, extra), tokenizer, num_image_tokens(cfg.labeler_model),
                                train_cfg.examples_per_scene, seed + extra)
        losses += train_labeler(model.to(device), rows, train_cfg, seed + extra, tokenizer.pad_token_id,
                                device=device)
        save_vlm(model.cpu(), processor, out)
        if not train_cfg.check_scenes:
            break
        quality = labeler_quality(out, cfg, "val", train_cfg.check_scenes, CHECK_QUESTIONS, 256, device)
        checks.append({"pass": extra + 1, **quality})
        if checks[-1]["accuracy"] >= train_cfg.min_accuracy:
            break
    else:
        log(f"[yellow]world labeler: accuracy {checks[-1]['accuracy']:.3f} on held-out `val` claims is still below "
            f"{train_cfg.min_accuracy} after {train_cfg.max_extra_passes} extra passes; its pairs will be noisier")
    return losses, checks


def extra_labeler_scenes(cfg: WorldConfig, extra: int) -> list[Scene]:
    """The train-split scenes of the labeler's extra pass `extra` (1, 2, ...): the slice after the policy's and
    the labeler's own (`train_scenes`) and after every earlier pass's, the same size as the first pass's."""
    n = cfg.labeler_train.scenes
    first = cfg.policy_train.scenes + n * extra
    return sample_scenes(cfg.seed, "train", first + n, cfg.prior)[first:]


# ---------------------------------------------------------------- cache


def _load_manifest(root: Path) -> dict:
    """The cached world's manifest, after checking that its three models load; raises with the reason otherwise."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    manifest = json.loads((root / MANIFEST).read_text())
    for role in ("policy", "labeler"):
        AutoProcessor.from_pretrained(root / role)
        AutoModelForImageTextToText.from_pretrained(root / role)
    if (root / SPLITTER).exists():  # trained on first use (`world_splitter`); a broken one is rebuilt with the rest
        AutoTokenizer.from_pretrained(root / SPLITTER)
        AutoModelForCausalLM.from_pretrained(root / SPLITTER)
    return manifest


def world_splitter(root: Path, cfg: WorldConfig) -> Path:
    """The world's splitter under a bootstrapped `root`, trained there now when it is not yet (built under a temporary
    name and renamed into place when complete, like the bootstrap; a concurrent build that finished first wins)."""
    final = root / SPLITTER
    if final.exists():
        return final
    from rlaifv.world.splitter import train_splitter

    tmp = root / f".tmp-{SPLITTER}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"world models: training the claim splitter into {final}")
    with building(tmp):
        stats = train_splitter(cfg.seed, tmp, steps=cfg.splitter_steps,
                               tokenizer=build_tokenizer(cfg.seed, cfg.tokenizer_vocab))
        (tmp / SPLITTER_STATS).write_text(json.dumps(stats, indent=2))
    if final.exists():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        publish_dir(tmp, final)
    sweep_killed_builds(root, SPLITTER)
    return final


def sweep_killed_builds(folder: Path, name: str) -> None:
    """Remove `folder/.tmp-{name}-PID` folders whose process is gone: what a killed build left. They are never read
    (only a complete folder renamed into place counts), but each holds a model's worth of disk. A live concurrent
    build keeps its own."""
    for stale in folder.glob(f".tmp-{name}-*"):
        pid = stale.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        pass
    return True


def bootstrap(cfg: WorldConfig, force: bool = False) -> WorldModels:
    """The world's models for this config: from the cache when a complete build exists, else built now."""
    key = cache_key(cfg)
    base = cache_root() / "world"
    root = base / key
    if root.exists() and not force:
        try:
            manifest = _load_manifest(root)
            log(f"world models: cached at {root}")
            return WorldModels(root, root / "policy", root / "labeler", manifest)
        except Exception as exc:  # noqa: BLE001 - any failure to load means the cache entry is unusable
            log(f"[yellow]world models: cached build at {root} is unusable ({type(exc).__name__}: {exc}); rebuilding")
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.perf_counter()
    log(f"world models: bootstrapping (seed {cfg.seed}) into {root}")
    with building(tmp):  # a failed build (a full disk) leaves no half folder behind
        tokenizer = build_tokenizer(cfg.seed, cfg.tokenizer_vocab)
        stats: dict = {}
        aligned: dict[str, dict] = {}  # one alignment per model shape; the default world's two models share one
        scenes = dict(zip(("policy", "labeler"), train_scenes(cfg)))
        for role, shape in (("policy", cfg.policy_model), ("labeler", cfg.labeler_model)):
            shape_key = shape.model_dump_json(exclude={"tie_embeddings"})  # the head is not part of the alignment
            if shape_key not in aligned:
                aligned[shape_key], stats[f"vision_{role}"] = align_vision(cfg, tokenizer, shape, scenes["policy"])
            stats[role] = train_model(cfg, tokenizer, role, tmp / role, aligned[shape_key], scenes[role])
        manifest = {
            "key": key,
            "version": __version__,
            "config": cfg.model_dump(mode="json"),
            "seconds": round(time.perf_counter() - start, 1),
            "train": stats,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if root.exists():  # an unusable or forced-over build
        shutil.rmtree(root)
    publish_dir(tmp, root)
    sweep_killed_builds(base, key)
    return WorldModels(root, root / "policy", root / "labeler", manifest, built=True)
