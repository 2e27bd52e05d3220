"""Model families: which transformers class each one runs on, and where its denoiser logits sit.

Every family is a transformers class made bidirectional: `tiny-llada` and `llada` run on
`LlamaForCausalLM` (logits in place: position l predicts token l), `tiny-dream` and `dream` on
`Qwen2ForCausalLM` (logits shifted by one: position l-1 predicts token l). The tiny stand-ins are
built offline; `llada` (GSAI-ML/LLaDA-8B-Instruct, -Base, LLaDA-1.5) and `dream`
(Dream-org/Dream-v0-Instruct-7B, Dream-Coder-v0-Instruct-7B, apple/DiffuCoder-7B-Instruct) load the
authors' published checkpoints through `models/published.py`, which maps their config fields and
tensor names onto these classes. Known token ids and module names of each family live here and in
published.py, nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, Qwen2Config, Qwen2ForCausalLM


# The linear layers inside each Llama / Qwen2 decoder layer: LoRA's default targets.
DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class FamilySpec:
    name: str
    shift_logits: bool                       # position l-1 predicts token l (Dream)
    config_class: type
    model_class: type
    hub_id: str | None = None                # real families: the default published checkpoint
    # Dream's own generation counts position ids from each row's first real token under left
    # padding (pads get id 1); LLaDA's model numbers every position 0..T-1 whatever the padding.
    positions_from_first_token: bool = False

    @property
    def pretrained(self) -> bool:
        return self.hub_id is not None


FAMILIES: dict[str, FamilySpec] = {
    "tiny-llada": FamilySpec("tiny-llada", False, LlamaConfig, LlamaForCausalLM),
    "tiny-dream": FamilySpec("tiny-dream", True, Qwen2Config, Qwen2ForCausalLM, positions_from_first_token=True),
    "llada": FamilySpec("llada", False, LlamaConfig, LlamaForCausalLM, hub_id="GSAI-ML/LLaDA-8B-Instruct"),
    "dream": FamilySpec("dream", True, Qwen2Config, Qwen2ForCausalLM, hub_id="Dream-org/Dream-v0-Instruct-7B",
                        positions_from_first_token=True),
}


def lora_target_pattern(names: tuple[str, ...]) -> str:
    """peft `target_modules` regex: the named linear layers inside numbered decoder layers only."""
    return rf".*\.\d+\.(?:.*\.)?(?:{'|'.join(names)})"


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
