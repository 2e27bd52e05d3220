"""Model families: how each one is built or loaded, and where its denoiser logits sit.

`llada` (GSAI-ML/LLaDA-8B-*) and `dream` (Dream-org/Dream-v0-*-7B) load from the hub or a local
directory with their own modeling code (`trust_remote_code`). `tiny-llada` and `tiny-dream` are
built offline from transformers' own Llama and Qwen2 classes with bidirectional attention; they
stand in for LLaDA (logits in place) and Dream (logits shifted by one: position l-1 predicts
token l). Known token ids and module names of each family live here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, Qwen2Config, Qwen2ForCausalLM


LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class FamilySpec:
    name: str
    shift_logits: bool
    lora_target_modules: tuple[str, ...]     # linear layers inside each decoder layer
    config_class: type | None = None         # tiny stand-ins: built offline from these
    model_class: type | None = None
    hub_id: str | None = None                # real families: default weights (remote code)
    mask_token_id: int | None = None         # used when the tokenizer does not name its mask token
    decoder_layer: str | None = None         # class to shard and checkpoint; None: _no_split_modules
    # The sampler's KV cache (sampler.kv_cache, DiffusionLM.window_logits) needs a backbone that
    # takes position_ids, use_cache and past_key_values as a transformers Cache (crop included)
    # and attends bidirectionally over the cached keys. transformers' Llama / Qwen2 do; a real
    # family opts in by setting this once its modeling code has been checked to (LLaDA's and
    # Dream's remote code keep their own cache formats, so they stay off).
    kv_cache: bool = False

    @property
    def pretrained(self) -> bool:
        return self.hub_id is not None


FAMILIES: dict[str, FamilySpec] = {
    "tiny-llada": FamilySpec("tiny-llada", False, LLAMA_LINEAR, LlamaConfig, LlamaForCausalLM, kv_cache=True),
    "tiny-dream": FamilySpec("tiny-dream", True, LLAMA_LINEAR, Qwen2Config, Qwen2ForCausalLM, kv_cache=True),
    # LLaDA's blocks (LLaDALlamaBlock, OLMo-style) do not use the Llama names: attention output
    # is attn_out, the MLP is ff_proj (gate) / up_proj / ff_out (down). The model-level LM head is
    # also called ff_out, which is why targets are matched inside numbered layers only.
    "llada": FamilySpec("llada", False, ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"),
                        hub_id="GSAI-ML/LLaDA-8B-Instruct", mask_token_id=126336, decoder_layer="LLaDALlamaBlock"),
    "dream": FamilySpec("dream", True, LLAMA_LINEAR, hub_id="Dream-org/Dream-v0-Instruct-7B", mask_token_id=151666,
                        decoder_layer="DreamDecoderLayer"),
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
