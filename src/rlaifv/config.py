"""Configuration: one pydantic model per stage, loadable from YAML, echoed into every output folder.

Every field says what it does where it is declared. `WorldConfig.preset("micro")` is the tiny world the tests
share; "default" is what `rlaifv demo` runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from rlaifv.world.language import CaptionNoise
from rlaifv.world.models import TinyVLMConfig
from rlaifv.world.scenes import ScenePrior


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in a YAML file must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class SFTConfig(StrictModel):
    """Supervised training of one tiny model during the world bootstrap."""

    scenes: int = Field(20000, ge=1, description="training scenes, each seen once (one example per scene and task)")
    examples_per_scene: int = Field(1, ge=1, description="examples drawn per scene (captions or yes/no questions)")
    batch_size: int = Field(32, ge=1, description="examples per optimizer step; small batches (more steps) learn "
                                                  "grounding faster per CPU second than large ones")
    lr: float = Field(2e-3, gt=0, description="peak AdamW learning rate of the whole model")
    warmup_steps: int = Field(30, ge=0, description="linear warmup before the cosine decay")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    vision_pretrain_steps: int = Field(
        300, ge=0, description="steps that align image tokens with word embeddings before the language model trains"
    )
    vision_lr: float = Field(3e-3, gt=0, description="AdamW learning rate of the vision alignment")
    vision_batch_size: int = Field(64, ge=1, description="images per vision pretraining step")


class WorldConfig(StrictModel):
    """The synthetic world and its bootstrap: scenes, the captioner's noise, both tiny models and their training."""

    seed: int = Field(0, description="seeds scenes, captions, model init and training order")
    prior: ScenePrior = Field(default_factory=ScenePrior, description="co-occurrence prior of scenes")
    noise: CaptionNoise = Field(default_factory=CaptionNoise, description="the captioner's habits the policy learns")
    tokenizer_vocab: int = Field(800, ge=300, description="upper bound on the BPE vocabulary")
    policy_model: TinyVLMConfig = Field(default_factory=TinyVLMConfig, description="shape of the base policy")
    labeler_model: TinyVLMConfig = Field(default_factory=TinyVLMConfig, description="shape of the yes/no labeler")
    policy_train: SFTConfig = Field(default_factory=SFTConfig, description="captioning SFT of the base policy")
    labeler_train: SFTConfig = Field(
        default_factory=lambda: SFTConfig(scenes=6000, examples_per_scene=4, lr=1e-3),
        description="yes/no SFT of the labeler (balanced answers, hard negatives)",
    )

    @classmethod
    def preset(cls, name: Literal["default", "micro"]) -> WorldConfig:
        """Named presets; "micro" bootstraps in seconds for tests and is not expected to be any good."""
        if name == "default":
            return cls()
        if name == "micro":
            small = TinyVLMConfig(vision_hidden=32, text_hidden=64, text_heads=2, text_intermediate=128)
            return cls(
                policy_model=small,
                labeler_model=small,
                policy_train=SFTConfig(scenes=256, warmup_steps=2, vision_pretrain_steps=20),
                labeler_train=SFTConfig(scenes=128, examples_per_scene=4, batch_size=64, warmup_steps=2,
                                        vision_pretrain_steps=20),
            )
        raise ValueError(f"unknown preset {name!r}; expected 'default' or 'micro'")


class EvalConfig(StrictModel):
    """World evaluation: greedy descriptions and labeler accuracy on held-out scenes."""

    split: Literal["val", "test"] = Field("test", description="'test' for every reported metric, 'val' for selection")
    n_scenes: int = Field(500, ge=1, description="scenes to describe (the test split needs >= 500 for reporting)")
    labeler_questions_per_scene: int = Field(6, ge=2, description="balanced yes/no questions per scene for the labeler")
    max_new_tokens: int = Field(96, ge=1, description="cap on a description's length in tokens")
    batch_size: int = Field(64, ge=1, description="prompts per generation batch")


def load_yaml(model: type[BaseModel], path: Path | None, overrides: dict[str, Any] | None = None) -> Any:
    """Validate a YAML file (or nothing) plus overrides into a config model; errors name the bad field."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = loaded or {}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return model.model_validate(data)


def dump_yaml(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
