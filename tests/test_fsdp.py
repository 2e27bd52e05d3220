"""FSDP2 through Lightning's ModelParallelStrategy on two CPU processes (gloo), and a published
recipe (gdsd_llada_math: LoRA, chat prompts, mu 8) run for one rollout on a tiny stand-in."""

import json
import os
import subprocess
import sys


from gdsd_lightning.cli import train
from gdsd_lightning.config import load_experiment
from gdsd_lightning.models import DiffusionLM
from tests.conftest import make_tiny, rl_overrides
from tests.test_reasoning_tasks import MATH_ROW


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


def test_llada_math_recipe_runs_on_cpu_with_a_tiny_stand_in(tmp_path):
    stand_in = tmp_path / "tiny-llada"
    make_tiny("tiny-llada").save(stand_in)
    data = tmp_path / "math.jsonl"
    data.write_text("\n".join(json.dumps({**MATH_ROW, "problem": f"What is {i}+1?", "solution": f"\\boxed{{{i + 1}}}"})
                              for i in range(8)) + "\n")
    cfg = load_experiment("gdsd_llada_math", [
        f"model.path={stand_in}", "model.dtype=float32", "model.lora_r=4", "model.lora_alpha=8",
        "trainer.accelerator=cpu", "trainer.devices=1", "trainer.strategy=auto", "trainer.precision=32-true",
        "trainer.max_steps=8", "trainer.val_every_n_steps=8", "trainer.checkpoint_every_n_steps=8",
        "sampler.gen_length=16", "sampler.block_length=16", "sampler.steps=8", "rollout.prompts_per_step=1",
        f"task.train_path={data}", f"task.val_path={data}", "task.num_val=2", "eval.batch_size=2",
        f"runs_dir={tmp_path / 'runs'}", "run_name=cpu"])
    run_dir = train(cfg)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 8                                   # one rollout, mu = 8 optimiser steps
    final = run_dir / "final"
    assert (final / "adapter_model.safetensors").is_file() and not (final / "model.safetensors").exists()
    tuned = DiffusionLM.load(final)                               # LoRA adapters on top of the stand-in
    assert tuned.family.name == "tiny-llada" and hasattr(tuned.model, "disable_adapter")
