"""The command line's help and the loggers a run can write to."""

import csv
import json
import re
import time

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gdsd_lightning.cli import main
from gdsd_lightning.config import PROJECT_ROOT
from gdsd_lightning.experiment import load_experiment
from gdsd_lightning.errors import UserError
from gdsd_lightning.commands.train import train
from tests.conftest import rl_overrides

MAKE_TO_COMMAND = {"data": "make-data"}          # make targets whose CLI command has another name
NOT_CLI = {"test", "smoke-real"}                  # make targets that are not CLI commands (pytest; train on a toy checkpoint)


def help_text(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def test_help_lists_every_command_of_the_readme(capsys):
    table = (PROJECT_ROOT / "README.md").read_text().split("## Commands", 1)[1].split("\n## ", 1)[0]
    targets = set(re.findall(r"^\| `make ([a-z-]+)", table, re.M)) - NOT_CLI
    commands = {MAKE_TO_COMMAND.get(t, t) for t in targets} | set(re.findall(r"python -m gdsd_lightning ([a-z-]+)`", table))
    assert {"train", "eval", "compare", "bench", "make-data", "list"} <= commands
    overview = help_text(capsys)
    for command in commands:
        assert re.search(rf"^\s+{command}\b", overview, re.M), f"`--help` does not list {command}"
        assert help_text(capsys, command).startswith(f"usage: python -m gdsd_lightning {command}")
    for command in ("train", "eval", "compare"):       # the commands that read experiments take overrides
        assert "key=value" in help_text(capsys, command)


def test_every_logger_gets_the_scalars_and_the_sample_texts(tmp_path, varied_reward, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = load_experiment("gdsd_tiny_sudoku", rl_overrides(tmp_path, 2, run_name="all",
                                                          **{"trainer.logger": "tensorboard,csv,wandb"}))
    run_dir = train(cfg)

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert "rollout/reward_mean" in events.Tags()["scalars"] and "val/accuracy" in events.Tags()["scalars"]
    assert any(tag.startswith("rollout/samples") for tag in events.Tags()["tensors"])

    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["rollout/reward_mean"]) for r in rows if r["rollout/reward_mean"]]
    assert [float(r["val/accuracy"]) for r in rows if r["val/accuracy"]]
    samples = [json.loads(line) for line in (run_dir / "csv" / "samples.jsonl").read_text().splitlines()]
    assert {s["tag"] for s in samples} == {"rollout/samples", "val/samples"}
    assert all(isinstance(s["completion"], str) and 0.0 <= s["reward"] <= 1.0 for s in samples)

    # W&B's local run log is written by W&B's own process, which can lag behind on a loaded machine
    (record,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    keys = (b"rollout/reward_mean", b"val/accuracy", b"rollout/samples", b"val/samples")
    for _ in range(60):
        if all(key in record.read_bytes() for key in keys):
            break
        time.sleep(1)
    logged = record.read_bytes()
    for key in keys:
        assert key in logged, key


def test_an_unknown_logger_is_refused_with_the_choices():
    with pytest.raises(UserError, match=r"trainer.logger: unknown logger\(s\) 'mlflow'; choose from tensorboard, csv, wandb"):
        load_experiment("gdsd_tiny_sudoku", ["trainer.logger=tensorboard,mlflow"])


def test_every_make_target_is_phony():
    """No target names a file, so a stray file called `test` or `smoke-real` never silences one."""
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):(?!=)", makefile, re.M))
    assert targets == set(re.search(r"^\.PHONY: (.*)$", makefile, re.M).group(1).split())


def import_graph() -> dict[str, set[str]]:
    """Every import of a gdsd_lightning module, at module level or inside a function: module -> modules."""
    import ast

    package = PROJECT_ROOT / "gdsd_lightning"
    modules = {".".join(path.relative_to(PROJECT_ROOT).with_suffix("").parts).removesuffix(".__init__"): path
               for path in package.rglob("*.py")}
    graph = {}
    for module, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in modules:
                imported |= {node.module} | {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names} & modules.keys()
        graph[module] = imported - {module}
    return graph


def test_the_package_import_graph_has_no_cycle():
    """graphlib refuses a cycle (the training routine once lived in cli.py and compare imported it back)."""
    from graphlib import TopologicalSorter

    TopologicalSorter(import_graph()).prepare()      # raises graphlib.CycleError naming the cycle


# docs/architecture.md, "Layers": a module imports modules of its own layer and of those below, never above
LAYERS = [("errors", "metrics", "hub", "config", "runs"), ("tasks", "models", "lm_eval_tasks"),
          ("diffusion", "data", "callbacks", "checkpoints"), ("objectives", "generation", "protocol"), ("module",),
          ("experiment",), ("commands",), ("cli", "__main__")]


def test_no_module_imports_a_layer_above_it():
    layer = {name: level for level, names in enumerate(LAYERS) for name in names}
    part = lambda module: module.split(".")[1]     # noqa: E731  gdsd_lightning.<part>[.<module>]
    graph = {m: deps for m, deps in import_graph().items() if m != "gdsd_lightning"}
    assert {part(m) for m in graph} == set(layer), "a module of the package is in no layer of LAYERS"
    upward = [f"{m} -> {d}" for m, deps in graph.items() for d in deps if d != "gdsd_lightning"
              and layer[part(d)] > layer[part(m)]]
    assert not upward, f"imports that point up the layers: {upward}"
    doc = (PROJECT_ROOT / "docs" / "architecture.md").read_text()
    assert all(f"`{name}" in doc for name in layer), "docs/architecture.md does not name every layer's modules"


def test_every_command_runs_a_function_that_exists():
    import importlib

    from gdsd_lightning.cli import COMMANDS

    for name, command in COMMANDS.items():
        module, function = command.run.split(":")
        assert callable(getattr(importlib.import_module(module), function, None)), name

def test_the_progress_bar_shows_the_step_against_max_steps_and_no_logger_version(tmp_path):
    """`make train` once showed `Epoch 0/-2` (max_epochs=-1: the run ends at max_steps) and
    `v_num: oard` (the tail of the tensorboard/ directory's name)."""
    from types import SimpleNamespace

    from lightning.pytorch.loggers import TensorBoardLogger

    from gdsd_lightning.callbacks import ProgressBar

    bar = ProgressBar()
    trainer = SimpleNamespace(loggers=[TensorBoardLogger(save_dir=str(tmp_path), name="", version="tensorboard")],
                              progress_bar_metrics={"train/loss": 0.5}, global_step=3, max_steps=200, max_epochs=-1)
    assert bar.get_metrics(trainer, None) == {"step": "3/200", "train/loss": 0.5}
    bar._trainer = trainer
    assert bar._get_train_description(0).strip() == "Epoch 0"
