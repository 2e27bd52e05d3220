"""Faults: non-finite steps are skipped and bounded; SIGKILL and SIGTERM in the middle of a run
lose nothing, and the resumed run ends where the uninterrupted one does; a killed compare leaves no
worker training behind."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gdsd_lightning.commands.train import train
from gdsd_lightning.experiment import load_experiment
from gdsd_lightning.errors import TrainingStopped, UserError
from gdsd_lightning.models import DiffusionLM
from tests.conftest import rl_overrides, weights

# The stand-in reward of test_training.varied_reward, installed inside a child process.
CHILD = """
import sys, zlib
from gdsd_lightning.tasks.sudoku import Sudoku
Sudoku.reward = lambda self, completion, example: zlib.crc32(completion.encode()) % 100 / 100
from gdsd_lightning.cli import main
main(sys.argv[1:])
"""


def test_non_finite_steps_are_skipped_counted_and_bounded(tmp_path, varied_reward, monkeypatch):
    from gdsd_lightning.objectives.gdsd import GDSD

    original, calls = GDSD.loss, []

    def second_call_is_nan(self, policy, batch, iteration):
        loss, metrics = original(self, policy, batch, iteration)
        calls.append(iteration)
        return (loss * float("nan"), metrics) if len(calls) == 2 else (loss, metrics)

    monkeypatch.setattr(GDSD, "loss", second_call_is_nan)
    run_dir = train(load_experiment("gdsd_tiny_sudoku", rl_overrides(tmp_path, 4, **{"method.num_iterations": 1})))
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 4 and state["rollouts"]["done"] == 5       # one rollout's step was skipped
    assert state["rollouts"]["bad_steps"]["total"] == 1
    assert all(torch.isfinite(v).all() for v in DiffusionLM.load(run_dir / "final").state_dict().values())

    monkeypatch.setattr(GDSD, "loss", lambda self, *a: (lambda l, m: (l * float("inf"), m))(*original(self, *a)))
    cfg = load_experiment("gdsd_tiny_sudoku", rl_overrides(tmp_path, 4, run_name="bad", **{
        "method.num_iterations": 1, "trainer.max_bad_steps_in_a_row": 3}))
    with pytest.raises(TrainingStopped, match=r"^3 non-finite loss.* at step 0"):
        train(cfg)
    stopped_run = tmp_path / "runs" / "gdsd_tiny_sudoku" / "bad"
    summary = json.loads((stopped_run / "summary.json").read_text())
    assert summary["steps"] == 0 and summary["stopped"].startswith("3 non-finite loss")
    assert (stopped_run / "final").is_dir()      # the model as it stood, for evaluation


def test_a_checkpoint_write_that_dies_midway_leaves_the_previous_one(tmp_path, monkeypatch):
    from gdsd_lightning import callbacks
    from gdsd_lightning.callbacks import AtomicCheckpointIO

    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(1000)}, path)

    def dies_midway(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt       # stands in for the process being killed here

    monkeypatch.setattr(callbacks.torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]      # no temporary file left behind


@pytest.mark.parametrize("sig, checkpoint, exit_code", [(signal.SIGKILL, "last.ckpt", -signal.SIGKILL),
                                                        (signal.SIGTERM, "interrupted.ckpt", 128 + signal.SIGTERM)])
def test_a_killed_run_resumes_to_the_same_end(tmp_path, varied_reward, sig, checkpoint, exit_code):
    steps = 8
    extra = {"method.num_iterations": 1}
    straight = train(load_experiment("gdsd_tiny_sudoku", rl_overrides(tmp_path, steps, run_name="straight", **extra)))

    args = ["train", "gdsd_tiny_sudoku", *rl_overrides(tmp_path, steps, run_name="killed", **extra)]
    child = subprocess.Popen([sys.executable, "-c", CHILD, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": os.getcwd()})
    run_dir = tmp_path / "runs" / "gdsd_tiny_sudoku" / "killed"
    deadline = time.time() + 120
    while not (run_dir / "checkpoints" / "last.ckpt").exists():
        assert child.poll() is None and time.time() < deadline, child.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    child.send_signal(sig)
    assert child.wait(timeout=60) == exit_code
    ckpt = run_dir / "checkpoints" / checkpoint
    step = torch.load(ckpt, weights_only=False)["global_step"]
    assert 2 <= step < steps, f"the signal should land mid-run (checkpoint at step {step})"

    resumed = train(load_experiment("gdsd_tiny_sudoku", rl_overrides(tmp_path, steps, run_name="killed",
                                                                     resume=ckpt, **extra)))
    a, b = weights(DiffusionLM.load(straight / "final")), weights(DiffusionLM.load(resumed / "final"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), "resumed run diverged from the straight run"
    curve = lambda d: json.loads((d / "summary.json").read_text())["val_accuracy"]   # noqa: E731
    assert curve(resumed) == curve(straight)


def test_resuming_with_another_models_checkpoint_is_refused_in_one_sentence(tmp_path, varied_reward):
    first = train(load_experiment("gdsd_tiny_sudoku", rl_overrides(tmp_path, 2, **{"method.num_iterations": 1})))
    wider = rl_overrides(tmp_path, 4, resume=first / "checkpoints" / "last.ckpt",
                         **{"method.num_iterations": 1, "model.hidden_size": 48})
    with pytest.raises(UserError, match="does not match experiment 'gdsd_tiny_sudoku' \\(parameter shapes"):
        train(load_experiment("gdsd_tiny_sudoku", wider))


POOL_PARENT = """
import multiprocessing, os, time
from concurrent.futures import ProcessPoolExecutor
from gdsd_lightning.commands.compare import init_worker
pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=init_worker)
print(pool.submit(os.getpid).result(), flush=True)
pool.submit(time.sleep, 300).result()
"""


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads process states from /proc")
def test_a_killed_compare_takes_its_workers_with_it():
    parent = subprocess.Popen([sys.executable, "-c", POOL_PARENT], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
    worker = int(parent.stdout.readline())
    assert running(worker)
    parent.kill()
    parent.wait(timeout=30)
    deadline = time.time() + 30
    while running(worker) and time.time() < deadline:
        time.sleep(0.1)
    if running(worker):
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the compare worker outlived its killed parent")
