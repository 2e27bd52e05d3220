"""An experiment: every component's config section composed into one schema, loaded from
experiments/<name>.yaml and checked at start-up (unknown keys, wrong types, impossible values).

    cfg = load_experiment("gdsd_tiny_sudoku", ["trainer.max_steps=50", "method.psi=10"])

Each section belongs to the component that reads it and checks it (`problems(cfg)`, one sentence
per bad value, naming its key): task (tasks/base.py), model (models/build.py), sampler
(diffusion/sampler.py), rollout and optim (module.py), method (the objective's own `Config`, typed
by `method.name`; the objective also checks what it needs of the other sections), eval
(protocol.py), trainer and the run's own keys (here). config.py composes the files and asks them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from gdsd_lightning.config import check, compose, experiment_path, merge_checked, section_problems
from gdsd_lightning.diffusion.sampler import SamplerConfig
from gdsd_lightning.errors import UserError
from gdsd_lightning.models.build import ModelConfig
from gdsd_lightning.module import OptimConfig, RolloutConfig
from gdsd_lightning.objectives import OBJECTIVES
from gdsd_lightning.protocol import EvalConfig
from gdsd_lightning.tasks import TaskConfig

LOGGERS = ("tensorboard", "csv", "wandb")


@dataclass
class TrainerConfig:
    """The `trainer` section: how long the run trains, on what, and where it logs."""

    max_steps: int = 100                   # optimiser steps
    max_rollouts: Optional[int] = None     # also stop after this many rollout batches (skipped ones count)
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"                 # auto, ddp, ... (Lightning's names) or fsdp: FSDP2 (ModelParallelStrategy)
    precision: str = "32-true"
    log_every_n_steps: int = 1
    val_every_n_steps: int = 50            # optimiser steps between periodic evaluations
    checkpoint_every_n_steps: int = 50     # a multiple of val_every_n_steps: saved after that evaluation
    ref_sync_every_n_steps: int = 0        # copy policy -> reference every N optimiser steps (0: never)
    max_skipped_in_a_row: int = 200        # stop when this many rollouts in a row give no step
    max_bad_steps_in_a_row: int = 10       # stop after this many non-finite losses / gradients in a row
    logger: str = "tensorboard"            # Lightning loggers, comma-separated: tensorboard, csv, wandb
    logger_project: Optional[str] = None   # W&B project (default: the experiment's name)

    def problems(self, cfg: DictConfig) -> list[str]:
        """One sentence for each trainer.* setting that cannot run with this method's optimiser steps."""
        problems = []
        mu = cfg.method.get("num_iterations", 1)
        for key in ("val_every_n_steps", "checkpoint_every_n_steps", "ref_sync_every_n_steps"):
            if mu >= 1 and getattr(self, key) % mu:
                problems.append(f"trainer.{key} ({getattr(self, key)}) must be a multiple of method.num_iterations "
                                f"({mu}), the optimiser steps per rollout")
        if self.checkpoint_every_n_steps % self.val_every_n_steps:
            problems.append(f"trainer.checkpoint_every_n_steps ({self.checkpoint_every_n_steps}) must be a multiple "
                            f"of trainer.val_every_n_steps ({self.val_every_n_steps}): checkpoints follow evaluations")
        if self.strategy == "fsdp" and not str(self.devices).isdigit():
            problems.append(f"trainer.devices must be a number of devices with trainer.strategy=fsdp, "
                            f"got {self.devices!r}")
        unknown_loggers = [name for name in self.logger.split(",") if name not in LOGGERS]
        if unknown_loggers:
            problems.append(f"trainer.logger: unknown logger(s) {', '.join(map(repr, unknown_loggers))}; "
                            f"choose from {', '.join(LOGGERS)}, comma-separated")
        return problems


@dataclass
class ExperimentConfig:
    name: str = "unnamed"
    description: str = ""
    seed: int = 0
    batch_size: int = 64                   # SFT examples per optimiser step
    runs_dir: str = "runs"
    run_name: Optional[str] = None         # default: a timestamp
    resume: Optional[str] = None           # a last.ckpt to continue from
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    method: Any = field(default_factory=lambda: {"name": "sft"})  # typed by method.name: the objective's Config
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def load_experiment(name: str, overrides: list[str] | None = None) -> DictConfig:
    """Load, merge and check an experiment; returns a read-only structured config."""
    path = experiment_path(name)
    cfg, where = compose(ExperimentConfig, path, overrides)
    if cfg.name == "unnamed":
        cfg.name = path.stem
    cfg.method = typed_method(cfg.method, where)
    check(section_problems(cfg) + OBJECTIVES[cfg.method.name].config_problems(cfg))
    OmegaConf.set_readonly(cfg, True)
    return cfg


def load_run_config(path: Path) -> DictConfig:
    """A run's saved config.yaml read through today's schema (keys added since get their defaults)."""
    saved = OmegaConf.load(path)
    cfg = merge_checked(OmegaConf.structured(ExperimentConfig), saved, where=str(path))
    cfg.method = typed_method(cfg.method, str(path))
    return cfg


def typed_method(method: DictConfig, where: str) -> DictConfig:
    """The `method` section merged into the named objective's Config dataclass (unknown keys and
    wrong types refused, naming the key)."""
    name = method.get("name")
    if name not in OBJECTIVES:
        raise UserError(f"unknown method.name {name!r} in {where}; known methods: {', '.join(sorted(OBJECTIVES))}")
    merged = merge_checked(OmegaConf.structured(OBJECTIVES[name].Config), method, where=where, prefix="method.")
    return OmegaConf.create({"method": merged}).method
