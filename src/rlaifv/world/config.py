"""The synthetic world's configuration: scenes, the captioner's noise, both tiny models' shapes and their training.

These live with the world, not in `rlaifv.config` (the stages' configs), because the world is a layer below the
stages: its code reads them, and nothing here imports torch, so `rlaifv --help` and the config loaders stay light.
`WorldConfig.preset("micro")` is the tiny world the tests share; "default" is what `rlaifv demo` runs.

`WORLD_ROUNDS` is the one place the world's own settings for feedback rounds are declared: they apply where the
prompts are the world's (`rlaifv iterate` without a prompts file, `rlaifv demo`, `rlaifv collect` on a file that
`rlaifv world prompts` wrote), never to a user's data, which gets the paper's (`rlaifv.config.PAPER`).
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import Field

from rlaifv.config import CollectConfig, IterateConfig, StrictModel, read_config
from rlaifv.world.language import CaptionNoise
from rlaifv.world.scenes import ScenePrior


class TinyVLMConfig(StrictModel):
    """Shape of one tiny LLaVA. Defaults train to a useful model in about a minute on two CPU cores. Unknown keys are
    errors, as everywhere in a WorldConfig: a misspelt width must not silently build the default model."""

    vision_hidden: int = Field(64, description="CLIP tower width")
    vision_layers: int = Field(2, description="CLIP tower depth")
    patch_size: int = Field(32, description="pixels per patch side; 32 = one grid cell of the world per token")
    text_hidden: int = Field(128, description="Llama width; head_dim = text_hidden / text_heads must stay >= 32 "
                                              "for vLLM's CPU attention")
    text_layers: int = Field(2, description="Llama depth")
    text_heads: int = Field(4, description="attention heads of the Llama LM")
    text_intermediate: int = Field(384, description="Llama MLP width")
    max_positions: int = Field(256, description="longest sequence (image tokens + prompt + response)")
    tie_embeddings: bool = Field(True, description="share the input embeddings with the output head; an untied "
                                                   "head lets training keep the input embeddings (the vision "
                                                   "alignment's targets) fixed")


class SFTConfig(StrictModel):
    """Supervised training of one tiny model during the world bootstrap."""

    scenes: int = Field(20000, ge=1, description="training scenes, each seen once (one example per scene and task)")
    examples_per_scene: int = Field(1, ge=1, description="examples drawn per scene (captions or yes/no questions)")
    batch_size: int = Field(32, ge=1, description="examples per optimizer step; small batches (more steps) learn "
                                                  "grounding faster per CPU second than large ones")
    lr: float = Field(2e-3, gt=0, description="peak AdamW learning rate of the whole model")
    warmup_steps: int = Field(30, ge=0, description="linear warmup before the cosine decay")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    freeze_vision: bool = Field(
        True, description="keep the aligned vision tower and projector (and an untied model's input embeddings, the "
                          "alignment's targets) fixed while the language model learns to read them; training them "
                          "from the first step blurs the alignment the lookup relies on, and stated sizes go wrong "
                          "far more often (benchmarks/RESULTS.md)"
    )


class PolicyTrainConfig(SFTConfig):
    """Captioning SFT of the world's base policy."""

    micro_batches: int = Field(3, ge=1, description="forwards per optimizer step: a batch is sorted by length and cut "
                                                    "into this many micro-batches whose gradients add up to the "
                                                    "batch's, so short captions are not padded to the longest one "
                                                    "(one forward: 36 % of the tokens are padding; three: 14 %)")
    lookup_weight: float = Field(
        0.3, ge=0, description="weight of the training-only read-outs that predict, from each sentence's object name "
                               "on, what the image holds for that object (present? color, size, cell; "
                               "`SentenceLookupHeads`); 0 = captions alone, which leaves 41 % of stated positions "
                               "wrong")


class VisionAlignConfig(StrictModel):
    """The world's feature-alignment stage, run once and shared by the policy and the labeler.

    Each image token is regressed onto the summed input embeddings of the words for what its cell holds (and, with
    `positions`, the cell's place words), so image tokens read to a language model like the words that describe
    them. Both models start from the aligned vision tower, projector and word embeddings when their shapes match.
    """

    steps: int = Field(1500, ge=0, description="alignment steps; category recognition is step-bound (nearest word "
                                               "embedding, regression alone: 600 steps ~44 % of objects, 1500 ~93 %; "
                                               "with the category read-out: 1000 ~97 %, 1500 ~98 %)")
    lr: float = Field(3e-3, gt=0, description="AdamW learning rate (6e-3 diverges)")
    batch_size: int = Field(48, ge=1, description="images per step; the stage is bound by steps, not images, "
                                                  "above this size (smaller batches align a little worse)")
    positions: bool = Field(True, description="add each cell's place words (top, left, ...) to its target, so a "
                                              "position can be looked up by content like a category")
    category_weight: float = Field(
        0.5, ge=0, description="weight of a training-only cross-entropy read-out of each cell's category; shape is "
                               "what the regression alone learns slowest (color and size are near-linear in pixels)"
    )
    max_rel_error: float = Field(
        0.065, ge=0, description="final relative error (mean of the last 20 steps) above which the alignment starts "
                                 "again from a fresh initialisation: just above the worst of 15 full-length "
                                 "alignments of development seeds 0-4 (0.038-0.061, labelers 0.991-0.999 on `val` "
                                 "claims). Cut short to a higher error, their labelers reached 0.985-0.997 at "
                                 "0.066-0.068, 0.973 at 0.080, 0.947 at 0.100 and 0.89-0.90 at 0.126-0.128, however "
                                 "well the labeler itself trained"
    )
    max_restarts: int = Field(2, ge=0, description="most fresh starts the check may add (about 30 s each on 2 CPU "
                                                   "cores); the attempt with the lowest error is kept")


class LabelerTrainConfig(SFTConfig):
    """The labeler's yes/no training: questions packed behind each image, both lookup hops supervised.

    Here `examples_per_scene` is the number of questions packed behind one image in a row and `batch_size` counts
    images (rows) per step, so a step teaches batch_size x examples_per_scene verdicts.
    """

    scenes: int = Field(6000, ge=1, description="training scenes, one packed row each (375 steps of 16; the "
                                               "verdict loss is down to ~0.01 by step ~350)")
    examples_per_scene: int = Field(8, ge=1, description="yes/no questions packed behind each image")
    batch_size: int = Field(16, ge=1, description="images (packed rows) per optimizer step")
    lr: float = Field(2e-3, gt=0, description="peak AdamW learning rate of the language model")
    subject_weight: float = Field(
        1.0, ge=0, description="weight of the loss that reads, at each question's category word after the first "
                               "layer, what the image holds for that category (the lookup hop)"
    )
    answer_weight: float = Field(
        1.0, ge=0, description="weight of the loss that reads, at each question's last token after the last layer, "
                               "both what the image holds for the subject and what the question asks (the "
                               "gathering hop); 0 and 0 train on the verdict alone, which stays at chance"
    )
    check_scenes: int = Field(
        200, ge=0, description="world `val` scenes whose balanced yes/no claims (6 each) check the trained labeler "
                               "before it is cached; 0 skips the check"
    )
    min_accuracy: float = Field(
        0.97, ge=0, le=1, description="held-out accuracy the check asks for; below it the labeler trains one more "
                                      "pass on fresh train scenes and is checked again. A pair's precision is at "
                                      "most about the labeler's accuracy, and the rounds need 0.97"
    )
    max_extra_passes: int = Field(2, ge=0, description="most extra passes the check may add; a labeler still below "
                                                       "min_accuracy after them is kept, with a warning")


class WorldConfig(StrictModel):
    """The synthetic world and its bootstrap: scenes, the captioner's noise, both tiny models and their training."""

    seed: int = Field(0, description="seeds scenes, captions, model init and training order")
    prior: ScenePrior = Field(default_factory=ScenePrior, description="co-occurrence prior of scenes")
    noise: CaptionNoise = Field(default_factory=CaptionNoise, description="the captioner's habits the policy learns")
    tokenizer_vocab: int = Field(800, ge=300, description="upper bound on the BPE vocabulary")
    policy_model: TinyVLMConfig = Field(default_factory=TinyVLMConfig, description="shape of the base policy")
    labeler_model: TinyVLMConfig = Field(
        default_factory=lambda: TinyVLMConfig(tie_embeddings=False),
        description="shape of the yes/no labeler; its head is untied so its input embeddings stay the aligned ones",
    )
    vision: VisionAlignConfig = Field(default_factory=VisionAlignConfig, description="shared feature alignment")
    policy_train: PolicyTrainConfig = Field(default_factory=PolicyTrainConfig,
                                            description="captioning SFT of the base policy")
    labeler_train: LabelerTrainConfig = Field(
        default_factory=LabelerTrainConfig,
        description="yes/no training of the labeler (balanced answers, hard negatives)",
    )

    splitter_steps: int = Field(200, ge=1, description="training steps (batches of 32) of the tiny splitter LM that "
                                                       "turns world responses into claims for `--splitter llm`")

    @classmethod
    def preset(cls, name: Literal["default", "micro"]) -> WorldConfig:
        """Named presets; "micro" bootstraps in seconds for tests and is not expected to be any good."""
        if name == "default":
            return cls()
        if name == "micro":
            small = TinyVLMConfig(vision_hidden=32, text_hidden=64, text_heads=2, text_intermediate=128)
            return cls(
                policy_model=small,
                labeler_model=small.model_copy(update={"tie_embeddings": False}),
                vision=VisionAlignConfig(steps=20, max_restarts=0),  # 20 steps align nothing: never restarted
                policy_train=PolicyTrainConfig(scenes=256, warmup_steps=2),
                # checked on a few scenes, never trained on: a micro labeler is not meant to be accurate
                labeler_train=LabelerTrainConfig(scenes=256, examples_per_scene=4, batch_size=16, warmup_steps=2,
                                                 check_scenes=8, min_accuracy=0.0),
                splitter_steps=20,
            )
        raise ValueError(f"unknown preset {name!r}; expected 'default' or 'micro'")


# ---------------------------------------------------------------- the world's rounds: its own defaults

# Over the paper's defaults (IterateConfig's), for world prompts only. Each value was measured on the world
# (benchmarks/RESULTS.md, "Defaults of the world's rounds: the numbers behind them"):
# - a round sized for about a minute on 2 CPU cores: 768 fresh scenes, 10 samples of at most 96 tokens (the length
#   the world's evaluation allows), DPO at lr 1e-5 for 2 epochs (the paper: 5e-7 for 4; 1e-4 moves the tiny models
#   so fast that the first steps already cost Cover), 3 rounds (`rlaifv demo` runs 4);
# - length balancing off: a world hallucination is always one added sentence, so the paper's filter drops exactly
#   the cleanest pairs (the chosen answer is the rejected one without the invented object);
# - keep_accepted: a pair whose chosen answer has fewer accepted claims wins by saying less that is true, which DPO
#   would learn as stopping early;
# - existence claims: a real object named with a wrong colour is one rejected claim, so leaving it out wins; with a
#   bare "Is there a cup?" beside it the mention keeps an accepted claim, and keep_accepted drops that pair;
# - closest_length 2: both of each prompt's pairs are the ones whose answers are closest in length; a drawn pair
#   favours the shorter answer and teaches the rounds to stop early, which costs Cover on a policy that names few
#   real objects (development seeds 0-4, `val`);
# - once a round is Cover-bound (it kept its start because every better checkpoint named fewer real objects), the
#   later rounds alternate length-matched pairs with pairs whose chosen answer has the most accepted claims more;
# - 20 checkpoints a round, so the selection has one before Cover drops (it can drop between two neighbours);
# - an SFT term on the chosen answer (rpo_alpha 1): without it the chosen answers' log-probs fall with the rejected
#   ones, and in rounds that start from an accurate policy greedy descriptions got worse as training went on;
# - each round stops at 70 % of its 2-epoch schedule: the cosine's tail moved the policy too little for any round to
#   choose a checkpoint there, and leaving it out saves a quarter of a round's training and selection.
# Prompts sampled together on the world: its tiny models decode 320 rows (32 prompts x 10 samples) 1.3-1.8x faster
# per answer than 80 on 2 CPU cores (benchmarks/RESULTS.md); a real VLM keeps SampleConfig's 8, which bounds memory.
WORLD_SAMPLE_BATCH = 32

WORLD_ROUNDS: dict[str, Any] = {
    "rounds": 3,
    "prompts_per_round": 768,
    "checkpoints": 20,
    "cover_bound_closest_by": "mixed",
    "collect": {
        "sample": {"n": 10, "max_new_tokens": 96, "prompts_per_batch": WORLD_SAMPLE_BATCH},
        "claims": {"existence_claims": True},
        "pairs": {"length_balance": False, "keep_accepted": True, "closest_length": 2},
    },
    "dpo": {"learning_rate": 1e-5, "num_train_epochs": 2, "stop_fraction": 0.7, "rpo_alpha": 1.0,
            "per_device_train_batch_size": 8, "logging_steps": 5, "report_to": "none"},
}


# Why each world setting that differs from the paper's does, by the field name `paper_deviations` gives it (the demo
# adds `bon.` to best-of-N's); the demo's report prints it beside the paper's value. Numbers: benchmarks/RESULTS.md.
WORLD_WHY: dict[str, str] = {
    "rounds": "3 rounds keep `rlaifv iterate` on the world within minutes on a CPU; `rlaifv demo` runs the paper's 4",
    "prompts_per_round": "the CPU budget: 768 prompts x 10 samples give about 1500 pairs a round, and 4 rounds fit a "
                         "10-minute cold demo on 2 cores",
    "select_on": "the world knows every scene's truth, so 'auto' chooses each round's checkpoint on the world's own "
                 "`val` scenes (CHAIRs, with Cover at most 0.03 below the base policy's) instead of a benchmark file",
    "collect.sample.max_new_tokens": "the world's descriptions are a few short sentences (about 30 words); 96 tokens "
                                     "is the world evaluation's own cap",
    "collect.claims.splitter": "the world's sentences come from a fixed grammar; the world's trained splitter agreed "
                               "with the rules on all of 1000 held-out responses, and the rules cost nothing",
    "collect.claims.existence_claims": "development seeds 1-3, `val`, one run each: with them the rounds ended at "
                                       "CHAIRs 0.050 (seed 3, whose rounds 2 and 3 had kept round 1's policy), "
                                       "0.055 (seed 2) and 0.125 (seed 1) against 0.075, 0.070 and 0.105, Cover "
                                       "inside the selection's allowance, pair precision 0.980-0.996. Judging takes "
                                       "no longer: the bare questions repeat across samples and are asked once",
    "collect.pairs.length_balance": "measured on seed 0's test split, before settings were chosen on `val` only: "
                                    "with it 3 rounds cut CHAIRs by 7 %, without it by 32 % at a similar Cover cost",
    "collect.pairs.keep_accepted": "a chosen answer that stops before a last object it would have got wrong teaches "
                                   "the policy to stop early; dropping those pairs held seed 2's Cover in round 1 "
                                   "(0.918) at -71 % CHAIRs",
    "collect.pairs.closest_length": "development seeds 0-4, `val`: with both pairs length-matched instead of one "
                                    "drawn, seed 3 (a policy that names few real objects) ended at CHAIRs 0.060 "
                                    "against 0.110, seeds 1 and 2 at 0.080 and 0.020 against 0.050 and 0.015 with "
                                    "0.014 and 0.035 more Cover, seed 4 at 0.010 against 0.015; pair precision "
                                    "0.983-0.998. A drawn pair favours the shorter answer, and the rounds learn to "
                                    "stop early",
    "cover_bound_closest_by": "development seeds 0-4, `val`: it acted once, on seed 3 (a policy that names few real "
                              "objects), whose round 3 was Cover-bound: round 4 then reached CHAIRs 0.050 at Cover "
                              "0.756 where it had kept 0.060 / 0.754; no other seed had a Cover-bound round before "
                              "its last, so nothing else changed. Mixed pairs in every round instead held more Cover "
                              "but ended worse on seeds 0, 1 and 4, and one round's pair precision fell to 0.965",
    "dpo.num_train_epochs": "two passes (about 380 steps) already reach the point where a round's later checkpoints "
                            "trade Cover for little CHAIRs (seed 0, round 3: Cover 0.891 -> 0.746 by step 228), and "
                            "they fit the CPU budget",
    "dpo.stop_fraction": "on development seeds 0 and 1 (8 rounds, `val`) no round chose a checkpoint past 58 % of "
                         "its schedule, where the cosine's low learning rate barely moves the policy; stopping at 70 "
                         "% keeps every choice and saves about 15 s a round",
    "dpo.rpo_alpha": "development seeds 1-3, `val`: without it a round's chosen and rejected answers both lose "
                     "log-probability (seed 2, round 3: chosen -11 -> -17 nats) and greedy descriptions got worse "
                     "as the round trained (CHAIRs 0.055 -> 0.10, attribute errors 0.095 -> 0.165), so later rounds "
                     "kept their start. With it 4 rounds ended at CHAIRs 0.050, 0.015 and 0.110 on seeds 1, 2 and "
                     "3 against 0.125, 0.055 and 0.050. Of 13 rounds of seeds 0-3 trained on the same pairs with and "
                     "without it, 7 kept a lower `val` CHAIRs with it, 3 about the same, 3 higher (seed 3's round "
                     "1, seed 2's round 2, seed 0's round 2)",
    "dpo.learning_rate": "a tiny model fine-tuned whole for a few hundred steps a round; at 1e-4 the first 50 steps "
                         "already cost 0.2 of `val` Cover (the paper's 5e-7 was not measured on the world)",
    "bon.reward": "on development seeds 0 and 1 the log-ratio ranked the policy's own answers by their truth at or "
                  "below chance (0.39-0.59), the likelihood 0.69-0.72; best-of-8 with it cut `val` CHAIRs by "
                  "76-80 %",
    "bon.max_new_tokens": "the world's descriptions are a few short sentences; 96 tokens is the world evaluation's cap",
}


def world_defaults(model: type) -> dict[str, Any]:
    """The world's settings as the `start` of `read_config` for a config of type `model`: WORLD_ROUNDS for an
    IterateConfig, its `collect` section for a CollectConfig; {} (the paper's) for any other."""
    if model is IterateConfig:
        return copy.deepcopy(WORLD_ROUNDS)
    if model is CollectConfig:
        return copy.deepcopy(WORLD_ROUNDS["collect"])
    return {}


def world_rounds_config(**fields: Any) -> IterateConfig:
    """The world's IterateConfig (WORLD_ROUNDS over the paper's defaults), with `fields` on top, section by section
    (`collect={"sample": {"n": 4}}` keeps the world's pairing)."""
    from rlaifv.config import merge_config_data

    return read_config(IterateConfig, None, start=merge_config_data(world_defaults(IterateConfig), fields))
