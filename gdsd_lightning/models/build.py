"""Build the policy an experiment starts from: a saved model, a base experiment's final model,
or a freshly initialised tiny model."""

from __future__ import annotations

from omegaconf import DictConfig

from gdsd_lightning.errors import UserError
from gdsd_lightning.models.adapter import DiffusionLM
from gdsd_lightning.models.families import FAMILIES, build_tiny_model
from gdsd_lightning.models.tokenizer import build_char_tokenizer
from gdsd_lightning.runs import latest_final_model, require_file


class MissingBaseModel(UserError):
    """`model.init_from` names an experiment that has not been trained yet."""

    def __init__(self, experiment: str):
        super().__init__(f"no trained model for base experiment {experiment!r} (runs/{experiment}/latest/final)")
        self.experiment = experiment


def build_policy(cfg: DictConfig) -> DiffusionLM:
    m = cfg.model
    if m.family not in FAMILIES:
        raise UserError(f"unknown model.family {m.family!r}; known families: {', '.join(sorted(FAMILIES))}")
    if m.path:
        return DiffusionLM.load(require_file(m.path, "model.path"))
    if m.init_from:
        path = latest_final_model(cfg.runs_dir, m.init_from)
        if path is None:
            raise MissingBaseModel(m.init_from)
        return DiffusionLM.load(path)
    tokenizer = build_char_tokenizer()
    family = FAMILIES[m.family]
    model = build_tiny_model(family, len(tokenizer), m.hidden_size, m.num_layers, m.num_heads,
                             m.intermediate_size, m.max_position_embeddings, tokenizer.pad_token_id, cfg.seed)
    return DiffusionLM(model, tokenizer, family)
