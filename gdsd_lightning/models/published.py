"""LLaDA's and Dream's published checkpoints on transformers' own Llama and Qwen2 classes.

    model, tokenizer, published = load_pretrained(family, source, dtype)   # a directory or hub id
    missing = write_published(policy, directory)   # the weights back in the authors' format

LLaDA-8B (Instruct, Base, LLaDA-1.5; configuration_llada.py / modeling_llada.py of the hub repos)
stores config.json fields d_model, n_heads, n_kv_heads, n_layers, mlp_hidden_size, ... (a missing
field takes ModelConfig's default, as in the authors' code) and tensors model.transformer.{wte,
blocks.N.{attn_norm, q_proj, k_proj, v_proj, attn_out, ff_norm, ff_proj, up_proj, ff_out}, ln_f,
ff_out}. Its llama block (LLaDALlamaBlock) computes, per layer,

    h = x + attn_out(SDPA(RoPE(q_proj(a)), RoPE(k_proj(a)), v_proj(a))),   a = attn_norm(x)
    y = h + ff_out(silu(ff_proj(f)) * up_proj(f)),                            f = ff_norm(h)

with RMSNorm w * x / sqrt(mean(x^2) + rms_norm_eps) taken in float32, RoPE on the two halves of
each head (rotate_half; inv_freq_i = rope_theta^(-2i / head_dim)) at positions 0..T-1, attention
scale 1 / sqrt(head_dim), no causal mask and an additive padding mask on the keys: exactly Llama's
decoder layer with ff_proj = gate_proj, up_proj = up_proj, ff_out = down_proj, attn_out = o_proj.
Every config option outside that (ALiBi, biases, q/k layer norm, other block types, scaled
logits, ...) is refused in one sentence naming its key.

Dream-v0-7B, Dream-Coder-v0-7B and DiffuCoder-7B (configuration_dream.py / modeling_dream.py) are
Qwen2 networks with Qwen2's own tensor names and config fields; Dream's attention (SDPA, is_causal
False) never applies a sliding window, and RoPE scaling is refused.

Weights stream shard by shard from the safetensors files straight into `dtype` (transformers'
from_pretrained with a key mapping on a meta-device model): never two copies in memory.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import LlamaConfig, PretrainedConfig, PreTrainedModel, Qwen2Config, Qwen2Tokenizer
from transformers.dynamic_module_utils import get_relative_imports
from transformers.models.auto.tokenization_auto import tokenizer_class_from_name
from transformers.utils import cached_file

from gdsd_lightning.errors import UserError
from gdsd_lightning.hub import offline_unless_reachable, unreachable
from gdsd_lightning.models.families import FamilySpec

# Keys every transformers config.json may carry, whatever the model.
GENERIC_KEYS = set(PretrainedConfig().to_dict()) | {"torch_dtype", "auto_map", "use_cache", "bos_token_id",
                                                     "eos_token_id", "pad_token_id", "tokenizer_class"}

# configuration_llada.py, ModelConfig: the value a config.json key takes when it is left out.
LLADA_DEFAULTS = {
    "d_model": 768, "n_heads": 12, "n_kv_heads": None, "n_layers": 12, "mlp_ratio": 4, "mlp_hidden_size": None,
    "activation_type": "swiglu", "block_type": "sequential", "block_group_size": 1, "alibi": False,
    "alibi_bias_max": 8.0, "rope": False, "rope_full_precision": True, "flash_attention": False,
    "attention_dropout": 0.1, "multi_query_attention": None, "attention_layer_norm": False,
    "residual_dropout": 0.1, "embedding_dropout": 0.1, "input_emb_norm": False, "layer_norm_type": "default",
    "layer_norm_with_affine": True, "rms_norm_eps": 1e-5, "attention_layer_norm_with_affine": True,
    "max_sequence_length": 1024, "rope_theta": 10000.0, "include_qkv_bias": False, "include_bias": False,
    "bias_for_layer_norm": None, "scale_logits": False, "vocab_size": 50257, "embedding_size": 50304,
    "weight_tying": True, "eos_token_id": 50256, "pad_token_id": 50256, "mask_token_id": 50256,
    "init_device": None, "init_fn": "normal", "init_std": 0.02, "init_cutoff_factor": None, "precision": None,
}
# LLaDA options the Llama mapping reproduces only at these values: key -> (allowed values, what it is).
LLADA_REQUIRED = {
    "block_type": (("llama",), "the block type (only LLaDA's llama block is Llama's decoder layer)"),
    "activation_type": (("silu",), "the MLP activation (silu(ff_proj) * up_proj)"),
    "layer_norm_type": (("rms",), "the layer norm (RMSNorm)"),
    "layer_norm_with_affine": ((True,), "the norms' weights"),
    "rope": ((True,), "rotary position embeddings"),
    "alibi": ((False,), "ALiBi attention biases"),
    "attention_layer_norm": ((False,), "layer norm on queries and keys"),
    "include_bias": ((False,), "biases in the linear layers"),
    "include_qkv_bias": ((False,), "biases in q_proj, k_proj, v_proj"),
    "bias_for_layer_norm": ((None, False), "biases in the norms"),
    "scale_logits": ((False,), "logits scaled by 1/sqrt(d_model)"),
    "input_emb_norm": ((False,), "embeddings scaled by sqrt(d_model)"),
    "block_group_size": ((1,), "grouped blocks"),
    "residual_dropout": ((0, 0.0), "residual dropout (Llama has none)"),
    "embedding_dropout": ((0, 0.0), "embedding dropout (Llama has none)"),
}
# Mapped onto LlamaConfig, or without effect on the network's values (initialisation, kernels,
# RoPE's float32 arithmetic in bf16: docs/fidelity.md).
LLADA_MAPPED = {"d_model", "n_heads", "n_kv_heads", "multi_query_attention", "n_layers", "mlp_ratio",
                "mlp_hidden_size", "max_sequence_length", "rope_theta", "rms_norm_eps", "attention_dropout",
                "vocab_size", "embedding_size", "weight_tying", "mask_token_id", "rope_full_precision",
                "flash_attention", "alibi_bias_max", "attention_layer_norm_with_affine", "init_device", "init_fn",
                "init_std", "init_cutoff_factor", "precision"}
# LLaDA's tensor names ({n}: block index) and Llama's.
LLADA_TENSORS = (
    ("model.transformer.wte", "model.embed_tokens"),
    ("model.transformer.blocks.{n}.attn_norm", "model.layers.{n}.input_layernorm"),
    ("model.transformer.blocks.{n}.q_proj", "model.layers.{n}.self_attn.q_proj"),
    ("model.transformer.blocks.{n}.k_proj", "model.layers.{n}.self_attn.k_proj"),
    ("model.transformer.blocks.{n}.v_proj", "model.layers.{n}.self_attn.v_proj"),
    ("model.transformer.blocks.{n}.attn_out", "model.layers.{n}.self_attn.o_proj"),
    ("model.transformer.blocks.{n}.ff_norm", "model.layers.{n}.post_attention_layernorm"),
    ("model.transformer.blocks.{n}.ff_proj", "model.layers.{n}.mlp.gate_proj"),
    ("model.transformer.blocks.{n}.up_proj", "model.layers.{n}.mlp.up_proj"),
    ("model.transformer.blocks.{n}.ff_out", "model.layers.{n}.mlp.down_proj"),
    ("model.transformer.ln_f", "model.norm"),
    ("model.transformer.ff_out", "lm_head"),
)

# configuration_dream.py, DreamConfig: defaults of the fields that reach the network.
DREAM_DEFAULTS = {
    "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "hidden_act": "silu", "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "rope_theta": 10000.0, "rope_scaling": None,
    "attention_dropout": 0.0, "pad_token_id": 151643,
}
DREAM_REQUIRED = {"rope_scaling": ((None,), "RoPE scaling")}
DREAM_MAPPED = set(DREAM_DEFAULTS) | {"mask_token_id", "initializer_range", "use_sliding_window", "sliding_window",
                                      "max_window_layers"}


@dataclass(frozen=True)
class PublishedFormat:
    """One authors' checkpoint format: its model_type, config mapping and tensor names."""

    name: str                                         # for messages
    architecture: str                                 # the transformers class family it maps onto
    model_type: str                                   # config.json's model_type
    defaults: dict
    required: dict
    mapped: set
    to_config: Callable[[dict, str], PretrainedConfig]   # (effective fields, where) -> transformers config
    tensors: tuple[tuple[str, str], ...] = ()         # (published name, transformers name); () = same names

    def config(self, raw: dict, where: str) -> PretrainedConfig:
        """The transformers config of config.json `raw`; refuses, in one sentence, every option the
        mapping does not reproduce."""
        for key, value in raw.items():
            if key in self.required:
                allowed, what = self.required[key]
                if value not in allowed:
                    raise UserError(f"{where}: {self.name} option {key}={value!r} ({what}) is not reproduced by "
                                    f"transformers' {self.architecture}; supported: "
                                    f"{' or '.join(repr(a) for a in allowed)}")
            elif key not in self.mapped and key not in GENERIC_KEYS and value not in (None, False, 0, "", [], {}):
                raise UserError(f"{where}: config key {key}={value!r} is not a {self.name} option this loader maps "
                                "(models/published.py); it is refused rather than ignored")
        for key, (allowed, what) in self.required.items():   # a left-out key takes the authors' default
            if key not in raw and self.defaults.get(key) not in allowed:
                raise UserError(f"{where}: {key} is missing, and {self.name}'s default {self.defaults[key]!r} "
                                f"({what}) is not supported; set {key} to {allowed[0]!r}")
        return self.to_config({**self.defaults, **raw}, where)

    def key_mapping(self) -> dict[str, str] | None:
        """from_pretrained's key_mapping: published tensor-name prefixes -> transformers'."""
        if not self.tensors:
            return None
        return {_pattern(published): ours.replace("{n}", r"\1") + "." for published, ours in self.tensors}

    def published_name(self, name: str) -> str:
        """A transformers parameter name in the published format."""
        for published, ours in self.tensors:
            match = re.match(_pattern(ours), name)
            if match:
                return published.format(n=match.group(1) if match.groups() else "") + "." + name[match.end():]
        return name


def _pattern(template: str) -> str:
    return "^" + re.escape(template).replace(r"\{n\}", r"(\d+)") + r"\."


def llama_config(c: dict, where: str) -> LlamaConfig:
    """LLaDA's effective config fields -> LlamaConfig (no padding_idx: LLaDA's embedding has none)."""
    if c["d_model"] % c["n_heads"]:
        raise UserError(f"{where}: d_model ({c['d_model']}) must be a multiple of n_heads ({c['n_heads']})")
    kv_heads = c["n_kv_heads"]
    if kv_heads is None:                              # ModelConfig.effective_n_kv_heads
        kv_heads = 1 if c["multi_query_attention"] else c["n_heads"]
    elif c["multi_query_attention"] is not None and kv_heads != (1 if c["multi_query_attention"] else c["n_heads"]):
        raise UserError(f"{where}: n_kv_heads and multi_query_attention disagree (LLaDA refuses this too)")
    return LlamaConfig(
        vocab_size=c["embedding_size"] or c["vocab_size"], hidden_size=c["d_model"],
        intermediate_size=c["mlp_hidden_size"] or c["mlp_ratio"] * c["d_model"], num_hidden_layers=c["n_layers"],
        num_attention_heads=c["n_heads"], num_key_value_heads=kv_heads, hidden_act="silu",
        max_position_embeddings=c["max_sequence_length"], rms_norm_eps=c["rms_norm_eps"],
        rope_parameters={"rope_type": "default", "rope_theta": c["rope_theta"]},
        attention_dropout=c["attention_dropout"], tie_word_embeddings=c["weight_tying"],
        attention_bias=False, mlp_bias=False, pad_token_id=None, use_cache=False,
    )


def qwen2_config(c: dict, where: str) -> Qwen2Config:
    """Dream's config fields -> Qwen2Config; no sliding window (Dream's SDPA attention applies none)."""
    return Qwen2Config(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
        num_hidden_layers=c["num_hidden_layers"], num_attention_heads=c["num_attention_heads"],
        num_key_value_heads=c["num_key_value_heads"] or c["num_attention_heads"], hidden_act=c["hidden_act"],
        max_position_embeddings=c["max_position_embeddings"], rms_norm_eps=c["rms_norm_eps"],
        rope_parameters={"rope_type": "default", "rope_theta": c["rope_theta"]},
        tie_word_embeddings=c["tie_word_embeddings"], attention_dropout=c["attention_dropout"],
        pad_token_id=c["pad_token_id"], use_sliding_window=False, use_cache=False,
    )


FORMATS = {
    "llada": PublishedFormat("LLaDA", "Llama", "llada", LLADA_DEFAULTS, LLADA_REQUIRED, LLADA_MAPPED, llama_config,
                             LLADA_TENSORS),
    "dream": PublishedFormat("Dream", "Qwen2", "Dream", DREAM_DEFAULTS, DREAM_REQUIRED, DREAM_MAPPED, qwen2_config),
}
# Model types refused by name, with the reason.
UNSUPPORTED_MODEL_TYPES = {"lladamoe": "LLaDA-MoE (mixture-of-experts blocks)",
                           "llada2_moe": "LLaDA 2.0 (mixture-of-experts blocks)"}
# Tokenizer classes of the authors' remote code that are transformers' own under another name:
# tokenization_dream.py's DreamTokenizer is Qwen2's byte-level BPE (same regex, tokens, defaults).
TOKENIZER_CLASSES = {"DreamTokenizer": Qwen2Tokenizer}


def read_json(source: str, filename: str, required: bool = True) -> dict | None:
    """A JSON file of a local directory or hub repository (None when absent and not `required`;
    when required and absent, an OSError like the hub's own)."""
    path = cached_file(source, filename, _raise_exceptions_for_missing_entries=False)
    if path is None:
        if required:
            raise OSError(f"{source} has no {filename}")
        return None
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON: {err}") from None


def load_pretrained(family: FamilySpec, source: str, dtype: torch.dtype, quantization=None,
                    attn_implementation: str = "sdpa") -> tuple[PreTrainedModel, object, dict | None]:
    """The model of `family` and its tokenizer from `source` (a directory or hub id): the authors'
    published format (LLaDA, Dream) or a save_pretrained directory of the family's own class.
    Returns (model, tokenizer, the published config.json or None). Fails in seconds, in one
    sentence, when the hub is unreachable and the files are not cached."""
    local = Path(source).is_dir()
    online = local or offline_unless_reachable()
    try:
        raw = read_json(source, "config.json")
        where = f"{source}/config.json" if local else f"{source} (config.json)"
        published = published_format(family, raw.get("model_type"), where)
        config = published.config(raw, where) if published else None     # None: the directory's own config.json
        if local:
            check_shards(Path(source))
        model, info = family.model_class.from_pretrained(
            source, config=config, key_mapping=published.key_mapping() if published else None, dtype=dtype,
            attn_implementation=attn_implementation, ignore_mismatched_sizes=True, output_loading_info=True,
            **quantization_kwargs(quantization, dtype))
        tokenizer = load_tokenizer(source)
    except OSError as err:          # the hub's errors (missing repo or file, offline) are OSErrors
        if not online:
            raise unreachable(f"{family.name} model", source, "set model.path=<local directory>") from None
        raise UserError(f"cannot load {family.name} model {source!r}: {str(err).splitlines()[0]}") from None
    check_loading(info, source, published)
    if hasattr(model, "_weight_conversions"):
        del model._weight_conversions   # save_pretrained writes transformers' names (ours); see write_published
    set_mask_token(tokenizer, raw, source)
    check_vocabulary(tokenizer, model.config.vocab_size, source)
    return model, tokenizer, raw if published else None


def published_format(family: FamilySpec, model_type: str | None, where: str) -> PublishedFormat | None:
    """The authors' format a config.json's model_type names, or None for the family's own
    transformers class (model_type llama / qwen2: a save_pretrained directory); else refused."""
    published = FORMATS.get(family.name)
    if model_type in UNSUPPORTED_MODEL_TYPES:
        raise UserError(f"{where}: {UNSUPPORTED_MODEL_TYPES[model_type]} is not supported by the {family.name} "
                        "family, which maps the dense published checkpoints only")
    if published is not None and model_type == published.model_type:
        return published
    if model_type != family.config_class.model_type:
        known = [f"{t!r}" for t in (published and published.model_type, family.config_class.model_type) if t]
        raise UserError(f"{where}: model_type {model_type!r} is not a {family.name} checkpoint "
                        f"(model_type {' or '.join(known)})")
    return None


def check_shards(directory: Path) -> None:
    """Every shard named in the safetensors index exists."""
    index = directory / "model.safetensors.index.json"
    if not index.is_file():
        return
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    missing = [s for s in shards if not (directory / s).is_file()]
    if missing:
        raise UserError(f"{directory}: shard {missing[0]} named in model.safetensors.index.json is missing "
                        f"({len(missing)} of {len(shards)} shards missing)")


def check_loading(info: dict, source: str, published: PublishedFormat | None) -> None:
    """Every parameter came from the checkpoint with its shape, and every tensor found a place."""
    name = published.published_name if published else (lambda n: n)
    problems = [f"tensor {name(k)} is missing" for k in sorted(info["missing_keys"])]
    problems += [f"tensor {k} has no place in the model" for k in sorted(info["unexpected_keys"])]
    problems += [f"tensor {name(key)} has shape {list(found)}, config.json asks for {list(expected)}"
                 for key, found, expected in sorted(info["mismatched_keys"])]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"{source}: {problems[0]}{more}; the checkpoint does not match its config.json")


def load_tokenizer(source: str):
    """The checkpoint's tokenizer, of the class its tokenizer_config.json names, without remote code
    (DreamTokenizer is Qwen2's; AutoTokenizer would read config.json's auto_map and ask for it)."""
    settings = read_json(source, "tokenizer_config.json", required=False) or {}
    name = settings.get("tokenizer_class") or "PreTrainedTokenizerFast"
    tokenizer_class = TOKENIZER_CLASSES.get(name) or tokenizer_class_from_name(name)
    if tokenizer_class is None:
        raise UserError(f"{source}: tokenizer_config.json's tokenizer_class {name!r} is not a transformers tokenizer "
                        "(the authors' remote code is not run)")
    return tokenizer_class.from_pretrained(source)


def set_mask_token(tokenizer, raw: dict | None, source: str) -> None:
    """The mask token: the tokenizer's own, else config.json's mask_token_id (LLaDA's tokenizer
    does not name it); neither is an error."""
    if tokenizer.mask_token_id is not None:
        return
    mask_id = (raw or {}).get("mask_token_id")
    if mask_id is None or not 0 <= mask_id < len(tokenizer):
        found = "has none" if mask_id is None else \
            f"names id {mask_id}, outside the tokenizer's {len(tokenizer)} tokens"
        raise UserError(f"{source}: no mask token: the tokenizer names no mask_token and config.json's mask_token_id "
                        f"{found}; a masked diffusion model needs one")
    tokenizer.mask_token = tokenizer.convert_ids_to_tokens(mask_id)


def check_vocabulary(tokenizer, embedding_rows: int, source: str) -> None:
    if len(tokenizer) > embedding_rows:
        raise UserError(f"{source}: the tokenizer has {len(tokenizer)} tokens but the model's embedding only "
                        f"{embedding_rows} rows (config.json's vocabulary size); tokenizer and weights do not belong "
                        "together")


def quantization_kwargs(quantization: str | None, dtype: torch.dtype) -> dict:
    """from_pretrained arguments of `model.quantization`: nf4 = 4-bit NormalFloat weights with double
    quantization and `dtype` compute (bitsandbytes), as d1, wd1, SPG and d-OPSD load LLaDA; the
    LM head stays unquantized. On this process's GPU (LOCAL_RANK)."""
    if quantization is None:
        return {}
    import os

    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=dtype)
    return {"quantization_config": config, "device_map": {"": int(os.environ.get("LOCAL_RANK", 0))}}


def write_published(policy, directory: str | Path, max_shard_size: str = "5GB") -> list[str]:
    """The policy's weights (LoRA adapters merged in) in the authors' format: their config.json,
    their tensor names in safetensors shards with an index, and the base checkpoint's own
    tokenizer files, generation config and the remote-code files the auto_maps name, copied as
    published (so transformers 4 and the authors' code read them). Returns the remote-code files
    it could not find at the base (the directory then needs them from the hub repository)."""
    from huggingface_hub import save_torch_state_dict

    if policy.published is None:
        raise UserError(f"this {policy.family.name} model was not loaded from a published LLaDA or Dream checkpoint, "
                        "so there is no published format to write")
    fmt, raw, source = FORMATS[policy.family.name], policy.published["config"], policy.published["source"]
    model = policy.model.merge_and_unload() if hasattr(policy.model, "merge_and_unload") else policy.model
    tied = model.config.tie_word_embeddings
    state = {fmt.published_name(k): v.contiguous() for k, v in model.state_dict().items()
             if not (tied and k == "lm_head.weight")}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_torch_state_dict(state, directory, max_shard_size=max_shard_size)
    (directory / "config.json").write_text(json.dumps(raw, indent=2))
    if "tokenizer_config.json" not in copy_files(source, directory, TOKENIZER_FILES):
        policy.tokenizer.save_pretrained(directory)     # the base's files are gone: transformers' own format
    copy_files(source, directory, ["generation_config.json"])
    return copy_remote_code(source, directory, remote_code_files(raw) + remote_code_files(
        read_json(directory, "tokenizer_config.json", required=False)))


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "added_tokens.json")


def copy_files(source: str, directory: Path, filenames) -> list[str]:
    """Copy those of `filenames` that the checkpoint `source` (directory or cached hub repo) has."""
    copied = []
    for filename in filenames:
        found = cached_file(source, filename, _raise_exceptions_for_missing_entries=False)
        if found is not None:
            shutil.copy(found, directory / filename)
            copied.append(filename)
    return copied


def copy_remote_code(source: str, directory: Path, filenames: list[str]) -> list[str]:
    """Copy the .py files `filenames` and, recursively, the files they import relatively
    (modeling_dream.py imports generation_utils.py); returns those the base does not have."""
    missing, pending, seen = [], list(filenames), set()
    while pending:
        filename = pending.pop()
        if filename in seen:
            continue
        seen.add(filename)
        if copy_files(source, directory, [filename]):
            pending += [f"{module}.py" for module in get_relative_imports(directory / filename)]
        else:
            missing.append(filename)
    return sorted(missing)


def remote_code_files(settings: dict | None) -> list[str]:
    """The .py files an auto_map names ("modeling_llada.LLaDAModelLM" -> modeling_llada.py)."""
    references = []
    for value in ((settings or {}).get("auto_map") or {}).values():
        references += [value] if isinstance(value, str) else [v for v in value if v]
    return sorted({reference.split("--")[-1].split(".")[0] + ".py" for reference in references})
