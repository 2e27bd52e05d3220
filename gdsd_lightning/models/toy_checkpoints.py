"""Tiny random checkpoints in LLaDA's and Dream's published directory formats, written without any
upstream code (`python -m gdsd_lightning toy-checkpoint RECIPE`, `make smoke-real`, the tests):
config.json with the fields of the hub repositories' (GSAI-ML/LLaDA-8B-Instruct,
Dream-org/Dream-v0-Instruct-7B) at toy sizes, safetensors shards under
the authors' tensor names with a model.safetensors.index.json, and a tokenizer (LLaDA: a fast
tokenizer that does not name its mask token, as LLaDA's; Dream: vocab.json + merges.txt under
tokenization_dream.py's class name, with Dream's auto_map)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import pre_tokenizers

from gdsd_lightning.models.tokenizer import build_char_tokenizer

# GSAI-ML/LLaDA-8B-Instruct's config.json, sizes shrunk (d_model 4096, n_heads 32, n_layers 32,
# mlp_hidden_size 12288, vocab 126464, mask 126336, eos 126081 there).
LLADA_CONFIG = {
    "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
    "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
    "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM",
                 "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
    "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": 32,
    "embedding_dropout": 0.0, "embedding_size": 128, "eos_token_id": 2, "flash_attention": False,
    "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta",
    "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
    "layer_norm_with_affine": True, "mask_token_id": 1, "max_sequence_length": 4096, "mlp_hidden_size": 48,
    "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None, "n_heads": 4, "n_kv_heads": 2,
    "n_layers": 2, "pad_token_id": 2, "precision": "amp_bf16", "residual_dropout": 0.0, "rms_norm_eps": 1e-5,
    "rope": True, "rope_full_precision": True, "rope_theta": 500000.0, "scale_logits": False,
    "transformers_version": "4.46.3", "use_cache": False, "vocab_size": 128, "weight_tying": False,
}
LLADA_BLOCK = ("attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm", "ff_proj", "up_proj", "ff_out")

# Dream-org/Dream-v0-Instruct-7B's config.json, sizes shrunk (hidden 3584, 28 layers of 28 heads
# and 4 kv heads, intermediate 18944, vocab 152064, mask 151666, pad/eos 151643 there).
DREAM_CONFIG = {
    "architectures": ["DreamModel"], "attention_dropout": 0.0,
    "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
    "bos_token_id": 256, "eos_token_id": 256, "hidden_act": "silu", "hidden_size": 32, "initializer_range": 0.02,
    "intermediate_size": 48, "mask_token_id": 257, "max_position_embeddings": 131072, "max_window_layers": 28,
    "model_type": "Dream", "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
    "pad_token_id": 256, "rms_norm_eps": 1e-6, "rope_scaling": None, "rope_theta": 1000000.0,
    "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.46.2", "use_cache": False, "use_sliding_window": False, "vocab_size": 272,
}
DREAM_SPECIAL = ["<|endoftext|>", "<|mask|>", "<|im_start|>", "<|im_end|>"]   # ids 256.. after the 256 bytes
DREAM_CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def random_weight(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """A linear layer's weight at std 1/sqrt(fan_in) (activations stay O(1) at any size), or a
    norm's weight near 1."""
    if len(shape) == 1:
        return 1 + 0.1 * torch.randn(*shape, generator=g)
    return torch.randn(*shape, generator=g) * shape[1] ** -0.5


def llada_tensors(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 tensors under LLaDA's names (modeling_llada.py: LLaDAModelLM.model.transformer)."""
    g = torch.Generator().manual_seed(seed)
    d, rows, hidden = config["d_model"], config["embedding_size"], config["mlp_hidden_size"]
    kv = config["n_kv_heads"] * d // config["n_heads"]
    shapes = {"attn_norm": (d,), "q_proj": (d, d), "k_proj": (kv, d), "v_proj": (kv, d), "attn_out": (d, d),
              "ff_norm": (d,), "ff_proj": (hidden, d), "up_proj": (hidden, d), "ff_out": (d, hidden)}
    tensors = {"model.transformer.wte.weight": torch.randn(rows, d, generator=g),
               "model.transformer.ln_f.weight": random_weight((d,), g)}
    if not config["weight_tying"]:
        tensors["model.transformer.ff_out.weight"] = random_weight((rows, d), g)
    for n in range(config["n_layers"]):
        for name in LLADA_BLOCK:
            tensors[f"model.transformer.blocks.{n}.{name}.weight"] = random_weight(shapes[name], g)
    return tensors


def dream_tensors(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 tensors under Dream's names (modeling_dream.py: DreamModel = Qwen2's layout)."""
    g = torch.Generator().manual_seed(seed)
    d, hidden, rows = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = config["num_key_value_heads"] * d // config["num_attention_heads"]
    tensors = {"model.embed_tokens.weight": torch.randn(rows, d, generator=g),
               "model.norm.weight": random_weight((d,), g), "lm_head.weight": random_weight((rows, d), g)}
    for n in range(config["num_hidden_layers"]):
        p = f"model.layers.{n}."
        for name, shape in [("self_attn.q_proj", (d, d)), ("self_attn.k_proj", (kv, d)), ("self_attn.v_proj", (kv, d)),
                            ("self_attn.o_proj", (d, d)), ("mlp.gate_proj", (hidden, d)), ("mlp.up_proj", (hidden, d)),
                            ("mlp.down_proj", (d, hidden)), ("input_layernorm", (d,)),
                            ("post_attention_layernorm", (d,))]:
            tensors[p + name + ".weight"] = random_weight(shape, g)
        for name, size in [("self_attn.q_proj", d), ("self_attn.k_proj", kv), ("self_attn.v_proj", kv)]:
            tensors[p + name + ".bias"] = 0.1 * torch.randn(size, generator=g)
    return tensors


def write_shards(directory: Path, tensors: dict[str, torch.Tensor], shards: int, dtype: torch.dtype) -> None:
    """model-0000i-of-0000n.safetensors and model.safetensors.index.json, as the hub repositories hold them."""
    names = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        part = names[i::shards]
        filename = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: tensors[k].to(dtype).contiguous() for k in part}, directory / filename, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, filename))
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def write_llada(directory: Path, seed: int = 0, shards: int = 2, dtype: torch.dtype = torch.float32,
                drop: tuple[str, ...] = (), **config) -> dict[str, torch.Tensor]:
    """A LLaDA-format checkpoint in `directory` (config.json fields overridden by `config`; tensors
    named in `drop` left out). Returns the tensors written, by LLaDA's names."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {**LLADA_CONFIG, **config}
    tensors = llada_tensors(config, seed)
    write_shards(directory, {k: v for k, v in tensors.items() if k not in drop}, shards, dtype)
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "configuration_llada.py").write_text("# the authors' file would be here\n")   # placeholders
    (directory / "modeling_llada.py").write_text("from .configuration_llada import LLaDAConfig  # the authors' file\n")
    tokenizer = build_char_tokenizer()
    tokenizer.mask_token = None        # LLaDA's tokenizer does not name <|mdm_mask|>; config.json's mask_token_id does
    tokenizer.save_pretrained(directory)
    return tensors


def write_dream(directory: Path, seed: int = 0, shards: int = 2, dtype: torch.dtype = torch.float32,
                **config) -> dict[str, torch.Tensor]:
    """A Dream-format checkpoint in `directory`; returns the tensors written."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {**DREAM_CONFIG, **config}
    tensors = dream_tensors(config, seed)
    write_shards(directory, tensors, shards, dtype)
    (directory / "config.json").write_text(json.dumps(config))
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    (directory / "vocab.json").write_text(json.dumps({ch: i for i, ch in enumerate(alphabet)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    added = {str(256 + i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                            "special": True} for i, t in enumerate(DREAM_SPECIAL)}
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "added_tokens_decoder": added, "additional_special_tokens": DREAM_SPECIAL[2:],
        "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
        "bos_token": None, "chat_template": DREAM_CHAT, "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>", "errors": "replace", "model_max_length": 131072,
        "pad_token": "<|endoftext|>", "split_special_tokens": False, "tokenizer_class": "DreamTokenizer",
        "unk_token": None}))
    for module in ("configuration_dream", "tokenization_dream", "generation_utils"):   # placeholders
        (directory / f"{module}.py").write_text("# the authors' file would be here\n")
    (directory / "modeling_dream.py").write_text("from .generation_utils import DreamGenerationMixin  # the authors'\n")
    return tensors


WRITERS = {"llada": write_llada, "dream": write_dream}
