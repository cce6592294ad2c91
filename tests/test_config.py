"""Configuration: loading stays torch-free, and keys that changed meaning or belong elsewhere are refused."""

from __future__ import annotations

import subprocess
import sys
import typing

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from rlaifv.config import (
    LR_LORA,
    BonConfig,
    CollectConfig,
    DPOConfig,
    EvalConfig,
    HFEngineConfig,
    IterateConfig,
    JudgeConfig,
    OpenAIEngineConfig,
    read_config,
)
from rlaifv.eval.bench_generate import BenchGenerateConfig
from rlaifv.world.config import WorldConfig, world_defaults, world_rounds_config


def _imports_torch(statement: str) -> bool:
    code = f"import sys; {statement}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"


def test_config_modules_load_no_torch():
    assert not _imports_torch("import rlaifv.config")
    assert not _imports_torch("import rlaifv.world.config")


# -- the judge's renamed key --------------------------------------------------------------------------------------


def test_judge_packs_per_batch_is_refused_with_what_it_became():
    with pytest.raises(ValidationError, match="packs_per_forward.*prompts_per_batch"):
        CollectConfig.model_validate({"judge": {"packs_per_batch": 4}})
    judge = JudgeConfig(packs_per_forward=4)
    assert judge.packs_per_forward == 4 and "packs_per_batch" not in judge.model_dump()


# -- engines: one variant per kind, each with only its own fields -------------------------------------------------


SERVED = {"kind": "openai", "urls": ["http://gpu1:8000/v1"], "model": "policy"}


def test_an_engine_is_the_variant_its_kind_names():
    cfg = CollectConfig.model_validate({"sample": {"policy": {"path": "my-vlm"}}, "judge": {"labeler": SERVED}})
    assert isinstance(cfg.sample.policy, HFEngineConfig) and cfg.sample.policy.name == "my-vlm"
    assert isinstance(cfg.judge.labeler, OpenAIEngineConfig) and cfg.judge.labeler.name == "policy@http://gpu1:8000/v1"
    assert isinstance(cfg.claims.splitter_model, HFEngineConfig)  # no kind: a model loaded here
    assert set(HFEngineConfig.model_fields) & set(OpenAIEngineConfig.model_fields) == {"kind", "path"}
    assert CollectConfig.model_validate(cfg.model_dump(mode="json")) == cfg
    assert "urls" not in cfg.model_dump()["sample"]["policy"] and "device" not in cfg.model_dump()["judge"]["labeler"]


@pytest.mark.parametrize(("engine", "message"), [
    ({"path": "x", "urls": ["http://a/v1"]}, "urls: only an engine of kind 'openai'"),
    ({**SERVED, "device": "cuda"}, "device: only an engine of kind 'hf'"),
    ({"kind": "vllm"}, "kind must be 'hf'"),
    ({"kind": "openai", "model": "m"}, "needs `urls`"),
    ({"pth": "x"}, "Extra inputs are not permitted"),
])
def test_an_engine_refuses_fields_it_does_not_have(engine, message):
    with pytest.raises(ValidationError, match=message):
        BonConfig.model_validate({"policy": engine})


def test_device_options_move_local_engines_and_leave_served_ones(tmp_path):
    from rlaifv.cli.feedback import _config

    yaml_file = tmp_path / "collect.yaml"
    yaml_file.write_text(yaml.safe_dump({"judge": {"labeler": SERVED}}))
    cfg = _config(yaml_file, False, device="cuda", policy="my-vlm")
    assert cfg.sample.policy.device == "cuda" and cfg.sample.policy.path == "my-vlm"
    assert cfg.claims.splitter_model.device == "cuda"
    assert cfg.judge.labeler == OpenAIEngineConfig.model_validate(SERVED)


# -- every nested config refuses unknown keys ---------------------------------------------------------------------


def _nested(model: type[BaseModel], path: tuple[str, ...] = ()) -> list[tuple[type[BaseModel], tuple[str, ...]]]:
    """Every config model reachable from `model`'s fields (engine unions: each variant), with its field path."""
    found = [(model, path)]
    for name, field in model.model_fields.items():
        for candidate in [field.annotation, *_args(field.annotation)]:
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                found += _nested(candidate, (*path, name))
    return found


def _args(annotation: object) -> list[object]:
    out = []
    for arg in typing.get_args(annotation):
        out += [arg, *_args(arg)]
    return out


ROOTS = [WorldConfig, CollectConfig, DPOConfig, IterateConfig, BonConfig, EvalConfig, BenchGenerateConfig]


@pytest.mark.parametrize("root", ROOTS, ids=lambda m: m.__name__)
def test_every_nested_config_refuses_unknown_keys(root):
    for model, path in _nested(root):
        assert model.model_config.get("extra") == "forbid", f"{root.__name__}.{'.'.join(path)}: {model.__name__}"


def test_a_misspelt_world_model_key_is_an_error():
    assert len(_nested(WorldConfig)) == 8  # the world, its prior and noise, two model shapes, three trainings
    with pytest.raises(ValidationError, match="policy_model.text_hiden"):
        WorldConfig.model_validate({"policy_model": {"text_hiden": 64}})
    with pytest.raises(ValidationError, match="labeler_train.lookup_weight"):  # a policy-only field
        WorldConfig.model_validate({"labeler_train": {"lookup_weight": 0.5}})


# -- options over a file --------------------------------------------------------------------------------------------


def test_options_change_their_field_and_what_derives_from_it(tmp_path):
    lora = read_config(DPOConfig, None, {("use_peft",): True, ("beta",): None})
    assert lora.use_peft and lora.learning_rate == LR_LORA and lora.beta == 0.1  # None: not given
    options = {("collect", "sample", "policy", "path"): "my-vlm", ("dpo", "seed"): 3}
    rounds = read_config(IterateConfig, None, options, start=world_defaults(IterateConfig))
    world = world_rounds_config()
    assert rounds.collect.sample.policy.path == "my-vlm" and rounds.dpo.seed == 3
    assert rounds.collect.sample.max_new_tokens == world.collect.sample.max_new_tokens == 96  # the world's sizes
    assert rounds.dpo.learning_rate == world.dpo.learning_rate
    # a file that sets one field of a section keeps what the defaults say about the rest of it
    section = tmp_path / "section.yaml"
    section.write_text("collect: {sample: {n: 4}}\n")
    partial = read_config(IterateConfig, section, None, start=world_defaults(IterateConfig))
    assert (partial.collect.sample.n, partial.collect.sample.max_new_tokens) == (4, 96)
    assert partial.collect.pairs == world.collect.pairs
    served = tmp_path / "served.yaml"  # an engine of the other kind replaces the default's whole
    served.write_text(yaml.safe_dump({"collect": {"sample": {"policy": {**SERVED, "path": "start/"}}},
                                      "serve": {"restart_command": "restart {policy}"}}))
    assert read_config(IterateConfig, served, None, start=world_defaults(IterateConfig)).collect.sample.policy.urls
    yaml_file = tmp_path / "world.yaml"
    yaml_file.write_text("splitter_steps: 7\n")
    micro = read_config(WorldConfig, yaml_file, {("seed",): 2}, start=WorldConfig.preset("micro").model_dump())
    assert (micro.seed, micro.splitter_steps, micro.vision.steps) == (2, 7, WorldConfig.preset("micro").vision.steps)
