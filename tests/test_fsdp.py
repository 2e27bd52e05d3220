"""FSDP2 through Lightning's ModelParallelStrategy on two CPU processes (gloo), and published
recipes (LoRA on the published targets, gradient checkpointing, chat prompts, their mu) run for a
few steps with the CPU smoke overlay (experiments/_base/cpu_smoke.yaml, data/smoke/) on tiny
checkpoints in LLaDA's and Dream's published formats."""

import json
import os
import subprocess
import sys

import pytest

from gdsd_lightning.commands.train import train
from gdsd_lightning.experiment import load_experiment
from gdsd_lightning.models import DiffusionLM
from tests.conftest import make_tiny, rl_overrides
from gdsd_lightning.models.toy_checkpoints import write_dream, write_llada


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "GDSD_RUN_DIR")}


def test_fsdp2_on_two_cpu_processes_trains_and_saves_full_weights(tmp_path):
    args = rl_overrides(tmp_path, 2, run_name="fsdp", **{
        "method.num_iterations": 1, "trainer.strategy": "fsdp", "trainer.devices": 2, "trainer.accelerator": "cpu"})
    done = subprocess.run([sys.executable, "-m", "gdsd_lightning", "train", "gdsd_tiny_sudoku", *args],
                          env=clean_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "runs" / "gdsd_tiny_sudoku" / "fsdp"
    final = DiffusionLM.load(run_dir / "final")                 # one full state dict, gathered from shards
    fresh = make_tiny("tiny-llada", hidden=32, layers=2)
    assert {k: v.shape for k, v in final.state_dict().items()} == {k: v.shape for k, v in fresh.state_dict().items()}
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 2
    assert (run_dir / "checkpoints" / "last.ckpt").is_dir()          # sharded checkpoint: one directory


@pytest.mark.parametrize("recipe, family", [("gdsd_llada_math", "llada"), ("diffu_grpo_llada_gsm8k", "llada"),
                                            ("gdsd_llada_code", "llada"), ("gdsd_dream_countdown", "dream")])
def test_published_recipes_run_on_cpu_on_published_format_checkpoints_with_the_smoke_overlay(tmp_path, recipe, family):
    checkpoint = tmp_path / family
    (write_llada if family == "llada" else write_dream)(checkpoint)
    overrides = ["extends=_base/cpu_smoke.yaml", f"model.path={checkpoint}", f"runs_dir={tmp_path / 'runs'}", "run_name=cpu"]
    cfg = load_experiment(recipe, overrides)
    assert cfg.model.gradient_checkpointing and cfg.model.family == family
    mu = cfg.method.num_iterations
    one_rollout = [f"trainer.{key}={mu}" for key in ("max_steps", "val_every_n_steps", "checkpoint_every_n_steps")]
    run_dir = train(load_experiment(recipe, overrides + one_rollout))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == mu and summary["rollouts"] == 1           # mu optimiser steps on one rollout
    final = run_dir / "final"
    assert (final / "adapter_model.safetensors").is_file() and not (final / "model.safetensors").exists()
    tuned = DiffusionLM.load(final)                               # LoRA adapters on top of the published checkpoint
    assert tuned.family.name == family and hasattr(tuned.model, "disable_adapter")
    assert json.loads((final / "gdsd_family.json").read_text())["base"] == str(checkpoint.resolve())
