"""Model families: how each one is built or loaded, and where its denoiser logits sit.

`tiny-llada` and `tiny-dream` are built offline from transformers' own Llama and Qwen2 classes
with bidirectional attention; they stand in for LLaDA (logits in place) and Dream (logits shifted
by one: position l-1 predicts token l).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, Qwen2Config, Qwen2ForCausalLM


@dataclass(frozen=True)
class FamilySpec:
    name: str
    shift_logits: bool
    config_class: type
    model_class: type
    lora_target_modules: tuple[str, ...]


FAMILIES: dict[str, FamilySpec] = {
    "tiny-llada": FamilySpec(
        "tiny-llada", False, LlamaConfig, LlamaForCausalLM,
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    ),
    "tiny-dream": FamilySpec(
        "tiny-dream", True, Qwen2Config, Qwen2ForCausalLM,
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    ),
}


def build_tiny_model(family: FamilySpec, vocab_size: int, hidden_size: int, num_layers: int,
                     num_heads: int, intermediate_size: int, max_position_embeddings: int,
                     pad_token_id: int, seed: int) -> PreTrainedModel:
    """A freshly initialised tiny model of `family`, deterministic given `seed`."""
    config = family.config_class(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings, pad_token_id=pad_token_id,
        tie_word_embeddings=False, use_cache=False,
    )
    config.gdsd_family = family.name
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return family.model_class(config)


def make_bidirectional(model: PreTrainedModel) -> PreTrainedModel:
    """Turn a decoder-only transformers model into a bidirectional (full-attention) denoiser.

    `config.is_causal = False` makes transformers build a bidirectional padding mask, and every
    attention module's `is_causal` flag is cleared so SDPA never falls back to its causal kernel.
    """
    model.config.is_causal = False
    for module in model.modules():
        if hasattr(module, "is_causal"):
            module.is_causal = False
    return model
