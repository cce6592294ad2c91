"""The policy as DPO trains it: dropout off, vision tower frozen, optional LoRA and gradient checkpointing, its
optimizer, and the merged model a LoRA run saves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rlaifv.config import DPOConfig
from rlaifv.engines.loading import load_weights
from rlaifv.train.lora import lean_lora

VISION_TOWER_NAMES = ("vision_tower", "visual", "vision_model", "vision_encoder")


def vision_tower(model: torch.nn.Module) -> torch.nn.Module | None:
    """The image encoder: the submodule built from `config.vision_config`, else one with a usual name."""
    vision_config = getattr(model.config, "vision_config", None)
    for _, module in model.named_modules():
        if module is not model and vision_config is not None and getattr(module, "config", None) is vision_config:
            return module
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in VISION_TOWER_NAMES:
            return module
    return None


def lora_targets(model: torch.nn.Module, skip_vision: bool) -> list[str]:
    """Every linear layer outside the output head (and outside the vision tower when it is frozen)."""
    head = model.get_output_embeddings()
    tower = vision_tower(model) if skip_vision else None
    skipped = {id(m) for m in tower.modules()} if tower is not None else set()
    return [name for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m is not head and id(m) not in skipped]


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Activation (gradient) checkpointing, non-reentrant: works with frozen inputs and LoRA without extra hooks."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name; the old one warns
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def prepare_policy(model: torch.nn.Module, cfg: DPOConfig) -> torch.nn.Module:
    """Dropout off, vision tower frozen, gradient checkpointing and LoRA as configured; returns the model to train."""
    model.config.use_cache = False
    if cfg.disable_dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    tower = vision_tower(model)
    if cfg.freeze_vision_tower:
        if tower is None:
            raise ValueError(f"{type(model).__name__}: no vision tower found to freeze; set freeze_vision_tower: "
                             "false")
        tower.requires_grad_(False)
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
    if cfg.use_peft:
        from peft import LoraConfig, get_peft_model

        targets = cfg.lora_target_modules or lora_targets(model, cfg.freeze_vision_tower)
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=targets, bias="none")
        model = get_peft_model(model, lora)
        lean_lora(model)  # no per-adapter copies of the layer inputs kept for the backward pass
    model.train()
    if cfg.freeze_vision_tower and tower is not None:
        tower.eval()
    return model


def optimizer_of(model: torch.nn.Module, cfg: DPOConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW on the trainable parameters; weight decay on matrices only (not biases and norms), as transformers.

    On a GPU its fused kernel (transformers' default there too): one launch per step instead of several per tensor.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.learning_rate,
                             fused=True if device.type == "cuda" else None)


def retie(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`state` with each tied weight (the output head tied to the input embeddings) pointing at its source's tensor.

    A state dict gathered from shards (FSDP) holds tied weights as separate, equal copies, which save_pretrained
    would write twice (for a 7B model's 32k x 4096 head, 0.5 GB in fp32); as one tensor it writes it once, as it
    does for an unsharded model. A copy that differs from its source is left alone, for save_pretrained to judge.
    """
    tied = getattr(model, "get_expanded_tied_weights_keys", None)
    for target, source in (tied(all_submodels=True) if tied is not None else {}).items():
        if target in state and source in state and torch.equal(state[target], state[source]):
            state[target] = state[source]
    return state


def merged_lora_model(policy: str | Path, peft_config: Any, lora_state: dict[str, torch.Tensor]):
    """The policy with trained LoRA weights merged in, built on the CPU from the policy's files (fp32)."""
    from peft import get_peft_model, set_peft_model_state_dict
    from transformers import AutoModelForImageTextToText

    base = load_weights(AutoModelForImageTextToText, policy, torch.float32)
    model = get_peft_model(base, peft_config)
    set_peft_model_state_dict(model, lora_state)
    return model.merge_and_unload()
