"""LLaDA's and Dream's published checkpoint formats on transformers' Llama and Qwen2 (models/published.py):
tiny random checkpoints written by the tests in those formats load as `llada` / `dream`, compute
what the authors' networks compute, train with gradient checkpointing, export back, and every bad
checkpoint stops with one sentence naming the file, tensor or key."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from transformers import LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from gdsd_lightning.cli import main
from gdsd_lightning.experiment import load_experiment
from gdsd_lightning.errors import UserError
from gdsd_lightning.models import FAMILIES, DiffusionLM
from gdsd_lightning.models.build import build_policy
from gdsd_lightning.models.lora import add_lora
from gdsd_lightning.models.toy_checkpoints import DREAM_CONFIG, LLADA_CONFIG, write_dream, write_llada


def llada_reference_logits(tensors: dict, config: dict, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """LLaDAModelLM's forward written out from modeling_llada.py's LLaDALlamaBlock, on LLaDA's own
    tensor names: RMSNorm in float32, RoPE on each head's two halves at positions 0..T-1, softmax
    attention at scale 1/sqrt(head_dim) with an additive key-padding bias, silu(ff_proj) * up_proj."""
    d, heads, kv_heads, eps = config["d_model"], config["n_heads"], config["n_kv_heads"], config["rms_norm_eps"]
    head_dim, (rows, length) = d // heads, ids.shape

    def norm(x, weight):
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    inv_freq = 1.0 / config["rope_theta"] ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.outer(torch.arange(length).float(), inv_freq).repeat(1, 2)

    def rope(t):                                    # (B, heads, T, head_dim)
        first, second = t[..., : head_dim // 2], t[..., head_dim // 2:]
        return t * angles.cos() + torch.cat([-second, first], -1) * angles.sin()

    def split(t, n):
        return t.view(rows, length, n, head_dim).transpose(1, 2)

    bias = (1.0 - attention.float())[:, None, None, :] * torch.finfo(torch.float32).min
    x = tensors["model.transformer.wte.weight"][ids]
    for n in range(config["n_layers"]):
        w = {name: tensors[f"model.transformer.blocks.{n}.{name}.weight"] for name in
             ("attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm", "ff_proj", "up_proj", "ff_out")}
        a = norm(x, w["attn_norm"])
        q = rope(split(a @ w["q_proj"].T, heads))
        k = rope(split(a @ w["k_proj"].T, kv_heads)).repeat_interleave(heads // kv_heads, 1)
        v = split(a @ w["v_proj"].T, kv_heads).repeat_interleave(heads // kv_heads, 1)
        scores = (q @ k.transpose(-1, -2) / head_dim ** 0.5 + bias).softmax(-1)
        x = x + (scores @ v).transpose(1, 2).reshape(rows, length, d) @ w["attn_out"].T
        f = norm(x, w["ff_norm"])
        x = x + (F.silu(f @ w["ff_proj"].T) * (f @ w["up_proj"].T)) @ w["ff_out"].T
    head = tensors["model.transformer.wte.weight" if config["weight_tying"] else "model.transformer.ff_out.weight"]
    return norm(x, tensors["model.transformer.ln_f.weight"]) @ head.T


@pytest.mark.parametrize("tied", [False, True])
def test_a_llada_checkpoint_loads_on_llama_and_computes_llada(tmp_path, tied):
    tensors = write_llada(tmp_path, weight_tying=tied, rms_norm_eps=0.05)
    policy = DiffusionLM.load_base(FAMILIES["llada"], str(tmp_path), torch.float32).eval()
    assert policy.family.name == "llada" and type(policy.transformer) is LlamaForCausalLM
    assert policy.decoder_layer_classes == {"LlamaDecoderLayer"}                   # what FSDP2 shards
    assert (policy.mask_id, policy.eos_id) == (LLADA_CONFIG["mask_token_id"], 2)      # mask id from config.json
    assert policy.published["config"]["model_type"] == "llada"
    assert policy.transformer.model.embed_tokens.padding_idx is None                # LLaDA's wte has none
    ids = torch.randint(5, 100, (2, 9))
    attention = torch.ones_like(ids)
    attention[0, :3] = 0                                                            # a left-padded row
    config = {**LLADA_CONFIG, "weight_tying": tied, "rms_norm_eps": 0.05}        # an eps large enough to matter
    expected = llada_reference_logits(tensors, config, ids, attention)
    assert torch.allclose(policy(ids, attention), expected, atol=1e-4)
    positions = torch.tensor([[4, 8], [0, 2]])
    assert torch.allclose(policy.logits_at(ids, attention, positions),
                          torch.take_along_dim(expected, positions.unsqueeze(-1), 1), atol=1e-4)


def test_a_dream_checkpoint_loads_on_qwen2_with_dreams_position_ids(tmp_path):
    tensors = write_dream(tmp_path)
    policy = DiffusionLM.load_base(FAMILIES["dream"], str(tmp_path), torch.float32).eval()
    assert policy.family.name == "dream" and type(policy.transformer) is Qwen2ForCausalLM
    assert policy.decoder_layer_classes == {"Qwen2DecoderLayer"}
    assert (policy.mask_id, policy.eos_id) == (257, 256) and len(policy.tokenizer) == 260
    assert policy.transformer.model.embed_tokens.padding_idx == 256                 # Dream's: its pad token
    assert policy.transformer.config.use_sliding_window is False
    c = DREAM_CONFIG
    stand_in = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
        num_hidden_layers=c["num_hidden_layers"], num_attention_heads=c["num_attention_heads"],
        num_key_value_heads=c["num_key_value_heads"], rms_norm_eps=c["rms_norm_eps"],
        rope_parameters={"rope_type": "default", "rope_theta": c["rope_theta"]})).eval()
    stand_in.load_state_dict(tensors)
    stand_in.config.is_causal = False
    for module in stand_in.modules():
        if hasattr(module, "is_causal"):
            module.is_causal = False
    ids = torch.randint(5, 250, (2, 7))
    attention = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7])
    dream_positions = torch.tensor([[1, 1, 0, 1, 2, 3, 4], list(range(7))])   # generation_utils.py: cumsum - 1, pads 1
    assert torch.equal(policy.position_ids(attention), dream_positions)
    raw = stand_in(input_ids=ids, attention_mask=attention, position_ids=dream_positions).logits
    expected = torch.cat([raw[:, :1], raw[:, :-1]], 1)                          # Dream's shift
    assert torch.allclose(policy(ids, attention), expected, atol=1e-5)


def test_every_dream_forward_passes_dreams_position_ids(tmp_path):
    """The sampler's full forward, the lean scores' hidden_at and the KV cache's window all number
    a left-padded row from its first real token."""
    write_dream(tmp_path)
    policy = DiffusionLM.load_base(FAMILIES["dream"], str(tmp_path), torch.float32).eval()
    seen = []
    policy.transformer.base_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["position_ids"]), with_kwargs=True)
    ids = torch.randint(5, 250, (2, 8))
    attention = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])
    dream_positions = torch.tensor([[1, 1, 0, 1, 2, 3, 4, 5], list(range(8))])
    policy(ids, attention)
    policy.logits_at(ids, attention, torch.tensor([[6], [7]]))
    _, cache = policy.window_logits(ids, attention, 5, 8, torch.tensor([[6], [7]]))
    policy.window_logits(ids, attention, 5, 8, torch.tensor([[6], [7]]), cache)
    order = torch.tensor([0, 1, 2, 3, 7, 4, 5, 6])       # outside the (shifted) window first, then the window
    assert [p.tolist() for p in seen] == [dream_positions.tolist()] * 2 + [
        dream_positions[:, order].tolist(), dream_positions[:, order[5:]].tolist()]


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_gradient_checkpointing_gives_the_same_gradients(tmp_path, family):
    (write_llada if family == "llada" else write_dream)(tmp_path)
    grads = []
    for checkpointing in (False, True):
        cfg = load_experiment(f"gdsd_{family}_countdown", ["extends=_base/cpu_smoke.yaml", f"model.path={tmp_path}",
                                                           f"model.gradient_checkpointing={checkpointing}"])
        torch.manual_seed(0)                              # the same LoRA initialisation and dropout masks
        policy = build_policy(cfg).train()
        assert policy.transformer.is_activation_checkpointing == checkpointing
        ids = torch.randint(5, 100, (2, 6))
        policy.hidden_at(ids, torch.ones_like(ids), torch.tensor([[1, 2], [3, 4]])).square().sum().backward()
        grads.append([p.grad.clone() for p in policy.parameters() if p.requires_grad])
    assert len(grads[1]) > 0 and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_the_recipes_lora_targets_are_the_published_effective_ones(tmp_path):
    """LLaDA's published runs asked for all seven Llama names, of which LLaDA's own modules have
    q_proj, k_proj, v_proj and up_proj: those four trained. Dream has all seven."""
    write_llada(tmp_path / "llada")
    write_dream(tmp_path / "dream")
    for recipe, family, expected in [("gdsd_llada_math", "llada", {"q_proj", "k_proj", "v_proj", "up_proj"}),
                                     ("gdsd_dream_countdown", "dream", {"q_proj", "k_proj", "v_proj", "o_proj",
                                                                        "gate_proj", "up_proj", "down_proj"})]:
        cfg = load_experiment(recipe, ["extends=_base/cpu_smoke.yaml", f"model.path={tmp_path / family}"])
        policy = build_policy(cfg)
        adapted = {n.split(".")[-4] for n, _ in policy.named_parameters() if n.endswith("lora_A.default.weight")}
        assert adapted == expected


@pytest.mark.parametrize("family, lora", [("llada", True), ("llada", False), ("dream", True)])
def test_final_model_exports_to_the_published_format_and_loads_back(tmp_path, capsys, family, lora):
    original = (write_llada if family == "llada" else write_dream)(tmp_path / "base", dtype=torch.bfloat16)
    policy = DiffusionLM.load_base(FAMILIES[family], str(tmp_path / "base"), torch.float32)
    if lora:
        add_lora(policy, r=4, alpha=8, dropout=0.0)
    for name, p in policy.named_parameters():
        if "lora_B" in name or not lora:
            p.data.add_(0.1 * torch.randn_like(p))             # trained adapters, or trained full weights
    policy.save(tmp_path / "final")                             # adapters + base path, or a Llama / Qwen2 directory
    main(["export", str(tmp_path / "final"), str(tmp_path / "exported"), "--dtype", "float32"])
    assert "exported" in capsys.readouterr().out
    base, exported = tmp_path / "base", tmp_path / "exported"
    names = {name for shard in exported.glob("*.safetensors") for name in safe_open(shard, "pt").keys()}
    assert names == set(original)                                               # the authors' tensor names
    assert json.loads((exported / "config.json").read_text()) == json.loads((base / "config.json").read_text())
    for published in ["tokenizer_config.json", *(p.name for p in base.glob("*.py"))]:   # copied as published
        assert (exported / published).read_bytes() == (base / published).read_bytes(), published
    reloaded = DiffusionLM.load_base(FAMILIES[family], str(exported), torch.float32).eval()
    ids = torch.randint(5, 100, (2, 8))
    assert torch.allclose(reloaded(ids), policy.eval()(ids), atol=1e-4)         # adapters merged in


@pytest.mark.parametrize("option, phrase", [
    ({"alibi": True}, "alibi=True"), ({"include_bias": True}, "include_bias=True"),
    ({"attention_layer_norm": True}, "attention_layer_norm=True"), ({"block_type": "sequential"}, "block_type"),
    ({"scale_logits": True}, "scale_logits"), ({"clip_qkv": 8.0}, "config key clip_qkv=8.0"),
    ({"residual_dropout": 0.1}, "residual_dropout"), ({"model_type": "lladamoe"}, "LLaDA-MoE"),
])
def test_llada_options_the_mapping_does_not_reproduce_are_refused_by_name(tmp_path, option, phrase):
    write_llada(tmp_path, **option)
    with pytest.raises(UserError, match=phrase) as refused:
        DiffusionLM.load_base(FAMILIES["llada"], str(tmp_path), torch.float32)
    assert str(tmp_path) in str(refused.value) and "\n" not in str(refused.value)


def test_an_option_left_out_takes_llada_default_and_is_refused_when_unsupported(tmp_path):
    write_llada(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["rope"]                                    # ModelConfig's default: no RoPE
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="rope is missing, and LLaDA's default False"):
        DiffusionLM.load_base(FAMILIES["llada"], str(tmp_path), torch.float32)


def test_dream_rope_scaling_is_refused(tmp_path):
    write_dream(tmp_path, rope_scaling={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(UserError, match="rope_scaling"):
        DiffusionLM.load_base(FAMILIES["dream"], str(tmp_path), torch.float32)


def test_bad_checkpoints_stop_with_one_sentence(tmp_path):
    llada = FAMILIES["llada"]
    write_llada(tmp_path / "shard")
    (tmp_path / "shard" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(UserError, match="shard model-00002-of-00002.safetensors named in model.safetensors.index.json"):
        DiffusionLM.load_base(llada, str(tmp_path / "shard"), torch.float32)
    write_llada(tmp_path / "tensor", drop=("model.transformer.blocks.1.up_proj.weight",))
    with pytest.raises(UserError, match="tensor model.transformer.blocks.1.up_proj.weight is missing"):
        DiffusionLM.load_base(llada, str(tmp_path / "tensor"), torch.float32)
    write_llada(tmp_path / "vocab", embedding_size=64, vocab_size=64)           # fewer rows than the tokenizer
    with pytest.raises(UserError, match="tokenizer has 101 tokens but the model's embedding only 64 rows"):
        DiffusionLM.load_base(llada, str(tmp_path / "vocab"), torch.float32)
    write_llada(tmp_path / "mask", mask_token_id=None)
    with pytest.raises(UserError, match="no mask token"):
        DiffusionLM.load_base(llada, str(tmp_path / "mask"), torch.float32)
    write_dream(tmp_path / "dream")
    with pytest.raises(UserError, match="model_type 'Dream' is not a llada checkpoint"):
        DiffusionLM.load_base(llada, str(tmp_path / "dream"), torch.float32)


def test_shapes_that_disagree_with_config_json_are_refused(tmp_path):
    write_llada(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "mlp_hidden_size": 40}))
    with pytest.raises(UserError, match=r"tensor model.transformer.blocks.0.(ff_proj|up_proj|ff_out).weight has shape"):
        DiffusionLM.load_base(FAMILIES["llada"], str(tmp_path), torch.float32)


def test_nf4_quantization_is_refused_on_cpu_in_one_sentence(tmp_path):
    write_llada(tmp_path)
    cfg = load_experiment("gdsd_llada_math", ["extends=_base/cpu_smoke.yaml", f"model.path={tmp_path}",
                                              "model.quantization=nf4"])
    with pytest.raises(UserError, match=r"model.quantization=nf4 .* runs on a CUDA GPU only"):
        build_policy(cfg)


def test_the_attention_implementation_is_transformers_own_choice(tmp_path):
    write_llada(tmp_path)
    policies = {name: DiffusionLM.load_base(FAMILIES["llada"], str(tmp_path), torch.float32,
                                            attn_implementation=name).eval() for name in ("sdpa", "eager")}
    assert {name: p.transformer.config._attn_implementation for name, p in policies.items()} == {
        "sdpa": "sdpa", "eager": "eager"}
    ids = torch.randint(5, 100, (2, 8))
    assert torch.allclose(policies["sdpa"](ids), policies["eager"](ids), atol=1e-5)
