"""Two CPU processes (DDP over gloo): the tiny RL loop runs, metrics are averaged over ranks, and
ranks whose gate leaves different numbers of rows neither deadlock nor desynchronise."""

import os
import subprocess
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import rl_overrides

# Only rank 0's rollouts pass d-OPSD's gate: rank 1 has no rows at every step.
CHILD = """
import os, sys
from gdsd_lightning.tasks.sudoku import Sudoku
Sudoku.is_correct = lambda self, completion, example: os.environ.get("LOCAL_RANK", "0") == "0"
from gdsd_lightning.cli import main
main(sys.argv[1:])
"""


def test_ddp_two_cpu_processes_with_uneven_gates(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    args = rl_overrides(tmp_path, 4, run_name="ddp", **{
        "rollout.num_generations": 1, "method.gate_min_reward": "null", "method.num_iterations": 1,
        "trainer.strategy": "ddp", "trainer.devices": 2, "trainer.accelerator": "cpu"})
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "GDSD_RUN_DIR")}
    done = subprocess.run([sys.executable, str(script), "train", "dopsd_tiny_sudoku", *args], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "runs" / "dopsd_tiny_sudoku" / "ddp"
    assert (run_dir / "final").is_dir() and not list(run_dir.parent.glob("ddp-*")), "ranks used different run dirs"
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    passed = [e.value for e in events.Scalars("train/gate_pass_fraction")]
    assert len(passed) == 4 and all(abs(v - 0.5) < 1e-6 for v in passed), passed   # mean of 1 (rank 0) and 0
