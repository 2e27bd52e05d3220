"""Build the policy an experiment starts from: a saved model, a real family's weights (hub id or
local copy), a base experiment's final model, or a freshly initialised tiny model."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from gdsd_lightning.errors import UserError
from gdsd_lightning.models.adapter import FAMILY_FILE, DiffusionLM
from gdsd_lightning.models.families import FAMILIES, build_tiny_model
from gdsd_lightning.models.lora import add_lora, has_lora
from gdsd_lightning.models.tokenizer import build_char_tokenizer
from gdsd_lightning.runs import latest_final_model


class MissingBaseModel(UserError):
    """`model.init_from` names an experiment that has not been trained yet."""

    def __init__(self, experiment: str):
        super().__init__(f"no trained model for base experiment {experiment!r} (runs/{experiment}/latest/final)")
        self.experiment = experiment


def build_policy(cfg: DictConfig) -> DiffusionLM:
    """The starting policy, then gradient checkpointing and LoRA adapters as configured."""
    m = cfg.model
    if m.family not in FAMILIES:
        raise UserError(f"unknown model.family {m.family!r}; known families: {', '.join(sorted(FAMILIES))}")
    family, dtype = FAMILIES[m.family], getattr(torch, m.dtype)
    if m.path and (family.pretrained or Path(m.path).is_dir()):
        policy = DiffusionLM.load(m.path, dtype) if (Path(m.path) / FAMILY_FILE).is_file() \
            else DiffusionLM.load_base(family, m.path, dtype)
    elif m.path:
        raise UserError(f"model.path {m.path} does not exist")
    elif family.pretrained:
        policy = DiffusionLM.load_base(family, family.hub_id, dtype)
    elif m.init_from:
        path = latest_final_model(cfg.runs_dir, m.init_from)
        if path is None:
            raise MissingBaseModel(m.init_from)
        policy = DiffusionLM.load(path, dtype)
    else:
        tokenizer = build_char_tokenizer()
        model = build_tiny_model(family, len(tokenizer), m.hidden_size, m.num_layers, m.num_heads,
                                 m.intermediate_size, m.max_position_embeddings, tokenizer.pad_token_id, cfg.seed)
        policy = DiffusionLM(model.to(dtype), tokenizer, family)
    if m.gradient_checkpointing:
        policy.transformer.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if m.lora_r and policy.base_source is None:
        raise UserError("model.lora_r needs base weights to adapt (model.path or model.init_from), not a fresh model")
    if m.lora_r and not has_lora(policy):     # a saved LoRA model keeps training its own adapters
        add_lora(policy, m.lora_r, m.lora_alpha, m.lora_dropout, m.lora_target_modules)
    return policy
