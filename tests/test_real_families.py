"""The paths of the real families (LLaDA, Dream) that do not need their weights: LoRA targets,
the adapter-disabled reference, saving adapters, chat prompts, layer classes to shard, the
recipes' configs, and failing fast when the hub is unreachable (checkpoints in the published
formats: test_published.py)."""

import json
import re
import time

import pytest
import torch

from gdsd_lightning import hub
from gdsd_lightning.cli import main
from gdsd_lightning.config import list_experiments
from gdsd_lightning.experiment import load_experiment
from gdsd_lightning.errors import UserError
from gdsd_lightning.generation import prompt_texts
from gdsd_lightning.models import DiffusionLM
from gdsd_lightning.models.families import DECODER_LINEARS, lora_target_pattern
from gdsd_lightning.models.lora import AdapterDisabled, add_lora, frozen_reference
from gdsd_lightning.tasks import get_task
from tests.conftest import make_tiny

# Module names of LLaDA-8B as the authors' modeling_llada.py builds them (OLMo-style blocks), which
# the published runs gave peft together with all seven Llama names.
LLADA_MODULES = ["model.transformer.wte", "model.transformer.blocks.0.q_proj", "model.transformer.blocks.0.k_proj",
                 "model.transformer.blocks.0.v_proj", "model.transformer.blocks.0.attn_out",
                 "model.transformer.blocks.0.ff_proj", "model.transformer.blocks.0.up_proj",
                 "model.transformer.blocks.0.ff_out", "model.transformer.ln_f", "model.transformer.ff_out"]


def test_the_published_llada_runs_adapted_four_layers_which_our_recipes_name():
    """peft matched the releases' seven Llama names against LLaDA's own module names: four hit."""
    pattern = lora_target_pattern(DECODER_LINEARS)
    hit = [n.rsplit(".", 1)[-1] for n in LLADA_MODULES if re.fullmatch(pattern, n)]
    assert hit == ["q_proj", "k_proj", "v_proj", "up_proj"]
    assert list(load_experiment("gdsd_llada_math", []).model.lora_target_modules) == hit
    assert list(load_experiment("gdsd_dream_countdown", []).model.lora_target_modules) == list(DECODER_LINEARS)


@pytest.mark.parametrize("family, layer", [("tiny-llada", "LlamaDecoderLayer"), ("tiny-dream", "Qwen2DecoderLayer")])
def test_lora_lands_on_every_decoder_linear_and_nothing_else(family, layer):
    policy = make_tiny(family)
    linears = {n for n, m in policy.model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}
    add_lora(policy, r=4, alpha=8, dropout=0.0)
    wrapped = {n.removesuffix(".lora_A.default") for n, _ in policy.model.named_modules() if n.endswith("lora_A.default")}
    assert {n.split("base_model.model.", 1)[1] for n in wrapped} == linears and len(linears) == 2 * 7
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert policy.decoder_layer_classes == {layer}


def test_llama_names_on_a_model_without_them_are_refused():
    with pytest.raises(UserError, match=r"\['attn_out', 'ff_out'\] match no linear layer.*tiny-llada"):
        add_lora(make_tiny("tiny-llada"), r=4, alpha=8, dropout=0.0, names=["q_proj", "attn_out", "ff_out"])


def test_reference_is_the_adapter_disabled_policy_without_a_copy():
    policy = make_tiny("tiny-llada")
    ids = torch.randint(5, 90, (2, 12))
    before = policy(ids).detach()
    add_lora(policy, r=4, alpha=8, dropout=0.0)
    for name, p in policy.named_parameters():
        if "lora_B" in name:
            p.data.normal_()                         # a trained adapter moves the policy
    reference = frozen_reference(policy)
    assert isinstance(reference, AdapterDisabled) and reference.policy is policy
    assert not torch.allclose(policy(ids), before)
    assert torch.allclose(reference(ids), before, atol=1e-6)
    positions = torch.tensor([[3, 7], [0, 11]])
    assert torch.allclose(reference.logits_at(ids, None, positions), before.gather(
        1, positions.unsqueeze(-1).expand(-1, -1, before.shape[-1])), atol=1e-5)
    assert isinstance(frozen_reference(make_tiny("tiny-llada")), DiffusionLM)   # no LoRA: a frozen copy


def test_lora_policy_saves_adapters_and_loads_back(tmp_path):
    base = make_tiny("tiny-dream")
    base.save(tmp_path / "base")
    policy = DiffusionLM.load(tmp_path / "base")
    add_lora(policy, r=4, alpha=8, dropout=0.0)
    for name, p in policy.named_parameters():
        if "lora_B" in name:
            p.data.normal_()
    policy.save(tmp_path / "tuned")
    record = json.loads((tmp_path / "tuned" / "gdsd_family.json").read_text())
    assert record["base"] == str((tmp_path / "base").resolve())
    assert not (tmp_path / "tuned" / "model.safetensors").exists()          # adapters only
    loaded = DiffusionLM.load(tmp_path / "tuned").eval()
    ids = torch.randint(5, 90, (2, 10))
    assert torch.allclose(loaded(ids), policy.eval()(ids), atol=1e-5)


def test_chat_prompts_carry_the_reasoning_format():
    policy = make_tiny("tiny-llada")
    row = {"question": "What is 2+2?", "answer": "#### 4"}
    [text] = prompt_texts(get_task("gsm8k"), [row], policy.tokenizer)
    assert text.startswith("<user>\n\nRespond in the following format:\n<reasoning>")
    assert text.endswith("</answer>\n\n\nWhat is 2+2?\n<assistant>\n")


def test_published_recipes_exist_and_load():
    expected = {f"gdsd_llada_{t}" for t in ("sudoku", "countdown", "gsm8k", "math", "code")} | {
        "gdsd_dream_sudoku", "gdsd_dream_countdown", "espo_llada_math", "spg_llada_gsm8k", "wd1_llada_gsm8k"} | {
        f"{m}_llada_{t}" for m in ("diffu_grpo", "dopsd") for t in ("gsm8k", "math", "sudoku", "countdown")}
    assert expected <= set(list_experiments())
    cfg = load_experiment("gdsd_llada_math", [])
    assert (cfg.model.family, cfg.model.lora_r, cfg.trainer.strategy, cfg.method.psi, cfg.method.beta) == (
        "llada", 128, "fsdp", 10.0, 1e-4)
    for qlora in ("diffu_grpo_llada_gsm8k", "wd1_llada_gsm8k", "spg_llada_sudoku", "dopsd_llada_math"):
        cfg = load_experiment(qlora, [])                  # the releases that loaded LLaDA in 4 bits
        assert (cfg.model.quantization, cfg.trainer.strategy) == ("nf4", "ddp")
    for bf16 in ("espo_llada_math", "spg_llada_gsm8k"):   # the GDSD release's runs: bf16 weights
        assert load_experiment(bf16, []).model.quantization is None


def test_unreachable_weights_fail_fast_in_one_sentence(monkeypatch, capsys):
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    start = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "gdsd_llada_math"])
    assert exit_info.value.code == 2 and time.monotonic() - start < 20
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: cannot load llada model 'GSAI-ML/LLaDA-8B-Instruct'") and "model.path=" in error
    assert "Traceback" not in error and len(error.splitlines()) == 1
