"""GPU only (skipped without CUDA; never run in CI): a few FSDP2 bf16 steps of GDSD on a
~100M-parameter tiny-llada stand-in and on a ~1.3B random checkpoint in LLaDA's published format
(through models/published.py), on every visible GPU (prints step time and peak memory); the
bench's MFU section at its --quick size; 4-bit NF4 QLoRA (model.quantization=nf4, bitsandbytes).

    .venv/bin/python -m pytest -m gpu -s tests/test_gpu.py
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gdsd_lightning.commands.train import train
from gdsd_lightning.experiment import load_experiment
from gdsd_lightning.models.build import build_policy
from gdsd_lightning.models.toy_checkpoints import write_llada

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

STAND_IN = ["model.init_from=null", "model.hidden_size=768", "model.num_layers=12", "model.num_heads=12",
            "model.intermediate_size=3072", "model.max_position_embeddings=512"]     # about 85M parameters


# LLaDA's published format at about 1.3B parameters (16 blocks of width 2048, LLaDA's vocabulary).
LLADA_1B = {"d_model": 2048, "n_heads": 16, "n_kv_heads": 16, "n_layers": 16, "mlp_hidden_size": 5504,
            "embedding_size": 126464, "vocab_size": 126464}


def fsdp_bf16_steps(tmp_path, experiment: str, args: list[str], what: str) -> None:
    """Four optimiser steps (two rollouts) with FSDP2 in bf16 on every GPU; prints time and memory."""
    devices = torch.cuda.device_count()
    args = [f"runs_dir={tmp_path / 'runs'}", "run_name=gpu", "trainer.max_steps=4", "trainer.accelerator=gpu",
            f"trainer.devices={devices}", "trainer.strategy=fsdp", "trainer.precision=bf16-true",
            "trainer.val_every_n_steps=4", "trainer.checkpoint_every_n_steps=4", "method.num_iterations=2",
            "rollout.prompts_per_step=8", "rollout.num_generations=8", "sampler.gen_length=64",
            "sampler.block_length=32", "sampler.steps=32", "task.num_val=64", "eval.batch_size=64", *args]
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "GDSD_RUN_DIR")}
    done = subprocess.run([sys.executable, "-m", "gdsd_lightning", "train", experiment, *args], env=env,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "runs" / experiment / "gpu"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 4
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    peak = max(e.value for e in events.Scalars("system/peak_memory_gib"))
    assert all(v == v for v in losses), "non-finite loss"
    print(f"\n[gpu] {devices} GPU(s), FSDP2 bf16, {what}: {summary['wall_time_s'] / summary['steps']:.2f} s "
          f"per optimiser step (rollout included, wall time / steps), peak memory {peak:.2f} GiB per GPU")


def test_fsdp_bf16_gdsd_steps_on_a_100m_stand_in(tmp_path):
    fsdp_bf16_steps(tmp_path, "gdsd_tiny_sudoku", STAND_IN, "~85M-parameter stand-in")


def test_fsdp_bf16_gdsd_steps_on_a_1b_checkpoint_in_llada_format(tmp_path):
    write_llada(tmp_path / "llada-1b", dtype=torch.bfloat16, **LLADA_1B)
    fsdp_bf16_steps(tmp_path, "gdsd_llada_countdown", [f"model.path={tmp_path / 'llada-1b'}", "task.data_dir=data/smoke",
                                                       "task.num_val=4", "eval.batch_size=4"],
                    "~1.3B-parameter LLaDA-format checkpoint, LoRA r 128 (q, k, v, up), gradient checkpointing")


def test_bench_mfu_section_on_the_gpu():
    from gdsd_lightning.commands.bench import QUICK_SCALE, SCALE_LOSS, SCALE_MODEL, SCALE_SAMPLER, bench_scale, peak_tflops

    peak = peak_tflops(torch.cuda.get_device_name()) or 100.0
    result = bench_scale("cuda", peak, SCALE_MODEL, {**SCALE_LOSS, **QUICK_SCALE["loss"]},
                         {**SCALE_SAMPLER, **QUICK_SCALE["sampler"]}, torch.bfloat16, repeats=1)
    print(result)
    assert 0.9e9 < result["parameters"] < 1.5e9
    assert 0 < result["loss_pass"]["mfu"] < 1 and 0 < result["sampler"]["mfu"] < 1


def test_nf4_qlora_loads_a_llada_checkpoint_in_4_bits_and_trains_only_the_adapters(tmp_path):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    write_llada(tmp_path / "llada")
    cfg = load_experiment("diffu_grpo_llada_gsm8k", [
        "extends=_base/cpu_smoke.yaml", f"model.path={tmp_path / 'llada'}", "model.quantization=nf4",
        "model.dtype=bfloat16", "trainer.accelerator=gpu"])
    policy = build_policy(cfg).train()
    layers = dict(policy.transformer.named_modules())
    assert isinstance(layers["model.layers.0.self_attn.q_proj.base_layer"], bnb.nn.Linear4bit)
    assert isinstance(layers["model.layers.0.self_attn.o_proj"], bnb.nn.Linear4bit)       # frozen, quantized
    assert not isinstance(layers["lm_head"], bnb.nn.Linear4bit)
    frozen = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(5, 100, (2, 12), device="cuda")
    logits = policy.logits_at(ids, torch.ones_like(ids), torch.tensor([[3, 7], [0, 11]], device="cuda"))
    assert torch.isfinite(logits).all()
    logits.float().logsumexp(-1).sum().backward()
    optimizer.step()
    assert all(torch.equal(p, frozen[n]) for n, p in policy.named_parameters() if not p.requires_grad)


def test_nf4_qlora_recipe_runs_one_rollout_on_the_gpu(tmp_path):
    pytest.importorskip("bitsandbytes")
    write_llada(tmp_path / "llada")
    overrides = ["extends=_base/cpu_smoke.yaml", f"model.path={tmp_path / 'llada'}", "model.quantization=nf4",
                 "trainer.accelerator=gpu", f"runs_dir={tmp_path / 'runs'}", "run_name=qlora"]
    mu = load_experiment("diffu_grpo_llada_gsm8k", overrides).method.num_iterations
    run_dir = train(load_experiment("diffu_grpo_llada_gsm8k", overrides + [
        f"trainer.{key}={mu}" for key in ("max_steps", "val_every_n_steps", "checkpoint_every_n_steps")]))
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == mu
