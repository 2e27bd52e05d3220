"""Build the policy an experiment starts from: a saved model, a real family's weights (hub id or
local copy), a base experiment's final model, or a freshly initialised tiny model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig

from gdsd_lightning.errors import UserError
from gdsd_lightning.models.adapter import FAMILY_FILE, DiffusionLM
from gdsd_lightning.models.families import FAMILIES, build_tiny_model
from gdsd_lightning.models.lora import add_lora, has_lora
from gdsd_lightning.models.tokenizer import build_char_tokenizer
from gdsd_lightning.runs import latest_final_model


@dataclass
class ModelConfig:
    """The `model` section: where the starting policy comes from and how it trains (build_policy)."""

    family: str = "tiny-llada"             # tiny-llada | tiny-dream (built offline) | llada | dream (hub)
    path: Optional[str] = None             # a saved model directory, or for llada/dream a hub id or local
                                           # copy (default: the family's hub id); tiny: None builds fresh
    init_from: Optional[str] = None        # experiment whose latest final model is the base
    dtype: str = "float32"                 # weights as loaded: float32 | bfloat16 | float16
    gradient_checkpointing: bool = False   # recompute each decoder layer in the backward pass
    lora_r: int = 0                        # LoRA rank; 0 trains the full weights
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: Optional[list[str]] = None   # default: all seven linears of each decoder layer
    quantization: Optional[str] = None     # nf4: 4-bit NF4 base weights under LoRA (QLoRA, bitsandbytes; CUDA only)
    attn_implementation: str = "sdpa"      # loaded weights: transformers' sdpa | flash_attention_2 | eager
    hidden_size: int = 128                 # the tiny families' shape (ignored when loading weights)
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 256

    def problems(self, cfg=None) -> list[str]:
        """One sentence for each model.* setting no model can be built with."""
        problems = []
        if self.path is not None and self.init_from is not None:
            problems.append("set at most one of model.path and model.init_from")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            problems.append(f"model.dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.lora_r < 0:
            problems.append(f"model.lora_r must be 0 (off) or positive, got {self.lora_r}")
        return problems


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
    check_quantization(cfg)
    family, dtype = FAMILIES[m.family], getattr(torch, m.dtype)
    loading = {"dtype": dtype, "quantization": m.quantization, "attn_implementation": m.attn_implementation}
    if m.path and (family.pretrained or Path(m.path).is_dir()):
        policy = DiffusionLM.load(m.path, **loading) if (Path(m.path) / FAMILY_FILE).is_file() \
            else DiffusionLM.load_base(family, m.path, **loading)
    elif m.path:
        raise UserError(f"model.path {m.path} does not exist")
    elif family.pretrained:
        policy = DiffusionLM.load_base(family, family.hub_id, **loading)
    elif m.init_from:
        path = latest_final_model(cfg.runs_dir, m.init_from)
        if path is None:
            raise MissingBaseModel(m.init_from)
        policy = DiffusionLM.load(path, **loading)
    elif m.quantization:
        raise UserError("model.quantization needs weights to load (model.path or model.init_from), not a fresh model")
    else:
        tokenizer = build_char_tokenizer()
        model = build_tiny_model(family, len(tokenizer), m.hidden_size, m.num_layers, m.num_heads,
                                 m.intermediate_size, m.max_position_embeddings, tokenizer.pad_token_id, cfg.seed)
        policy = DiffusionLM(model.to(dtype), tokenizer, family)
    if m.gradient_checkpointing:
        policy.transformer.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if m.lora_r and policy.base_source is None:
        raise UserError("model.lora_r needs base weights to adapt (model.path or model.init_from), not a fresh model")
    if m.lora_r and not has_lora(policy):     # a saved LoRA model keeps training its own adapters
        add_lora(policy, m.lora_r, m.lora_alpha, m.lora_dropout, m.lora_target_modules)
    return policy


def check_quantization(cfg: DictConfig) -> None:
    """`model.quantization=nf4` (QLoRA: a frozen 4-bit base under LoRA adapters, as d1, wd1, SPG and
    d-OPSD train LLaDA) runs only where bitsandbytes' 4-bit kernels do: on a CUDA GPU, each process
    holding the whole base (DDP), with LoRA on. Anything else is refused in one sentence."""
    m = cfg.model
    if m.quantization is None:
        return
    if m.quantization != "nf4":
        raise UserError(f"model.quantization must be null or 'nf4', got {m.quantization!r}")
    if cfg.trainer.accelerator == "cpu" or not torch.cuda.is_available():
        raise UserError("model.quantization=nf4 (4-bit NF4 weights, bitsandbytes) runs on a CUDA GPU only, and "
                        "this run has none; set model.quantization=null to train the unquantized weights")
    if cfg.trainer.strategy == "fsdp":
        raise UserError("model.quantization=nf4 does not combine with trainer.strategy=fsdp (FSDP2 does not shard "
                        "4-bit weights here); use trainer.strategy=ddp: every GPU holds the whole 4-bit base")
    if not m.lora_r:
        raise UserError("model.quantization=nf4 freezes the base in 4 bits: it needs LoRA adapters (model.lora_r > 0)")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError("model.quantization=nf4 needs bitsandbytes: pip install bitsandbytes") from None
