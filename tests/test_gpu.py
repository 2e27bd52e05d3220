"""GPU only (skipped without CUDA; never run in CI): a few FSDP2 bf16 steps of GDSD on a
~100M-parameter tiny-llada stand-in, on every visible GPU (prints step time and peak memory), and
the bench's MFU section at its --quick size.

    .venv/bin/python -m pytest -m gpu -s tests/test_gpu.py
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

STAND_IN = ["model.init_from=null", "model.hidden_size=768", "model.num_layers=12", "model.num_heads=12",
            "model.intermediate_size=3072", "model.max_position_embeddings=512"]     # about 85M parameters


def test_fsdp_bf16_gdsd_steps_on_a_100m_stand_in(tmp_path):
    devices = torch.cuda.device_count()
    args = [*STAND_IN, f"runs_dir={tmp_path / 'runs'}", "run_name=gpu", "trainer.max_steps=4", "trainer.accelerator=gpu",
            f"trainer.devices={devices}", "trainer.strategy=fsdp", "trainer.precision=bf16-true",
            "trainer.val_every_n_steps=4", "trainer.checkpoint_every_n_steps=4", "method.num_iterations=2",
            "rollout.prompts_per_step=8", "rollout.num_generations=8", "sampler.gen_length=64",
            "sampler.block_length=32", "sampler.steps=32", "task.num_val=64", "eval.batch_size=64"]
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "GDSD_RUN_DIR")}
    done = subprocess.run([sys.executable, "-m", "gdsd_lightning", "train", "gdsd_tiny_sudoku", *args], env=env,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "runs" / "gdsd_tiny_sudoku" / "gpu"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 4
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    peak = max(e.value for e in events.Scalars("system/peak_memory_gib"))
    assert all(v == v for v in losses), "non-finite loss"
    print(f"\n[gpu] {devices} GPU(s), FSDP2 bf16, ~85M parameters: {summary['wall_time_s'] / summary['steps']:.2f} s "
          f"per optimiser step (rollout included, wall time / steps), peak memory {peak:.2f} GiB per GPU")


def test_bench_mfu_section_on_the_gpu():
    from gdsd_lightning.bench import QUICK_SCALE, SCALE_LOSS, SCALE_MODEL, SCALE_SAMPLER, bench_scale, peak_tflops

    peak = peak_tflops(torch.cuda.get_device_name()) or 100.0
    result = bench_scale("cuda", peak, SCALE_MODEL, {**SCALE_LOSS, **QUICK_SCALE["loss"]},
                         {**SCALE_SAMPLER, **QUICK_SCALE["sampler"]}, torch.bfloat16, repeats=1)
    print(result)
    assert 0.9e9 < result["parameters"] < 1.5e9
    assert 0 < result["loss_pass"]["mfu"] < 1 and 0 < result["sampler"]["mfu"] < 1
