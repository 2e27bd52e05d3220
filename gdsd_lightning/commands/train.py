"""The training routine: one experiment from config to trained model.

    cfg = load_experiment("gdsd_tiny_sudoku", ["seed=1"])
    run_dir = train(cfg)                   # runs/<experiment>/<run>/ with final/ and summary.json
    run_dir = train_with_base(name, overrides)   # trains a missing base model (model.init_from) first

`train` builds the policy, the LightningModule (SFT or the RL loop), the prompt DataModule, the
callbacks (val history, checkpoints, rollout statistics), the logger and the Trainer; evaluates the
base (step 0), fits, evaluates the final step and saves the final model.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from gdsd_lightning.callbacks import (AtomicCheckpointIO, CheckpointAfterEvaluation, ProgressBar, ReferenceSync,
                                      RolloutStatistics, ValHistory)
from gdsd_lightning.config import save_config
from gdsd_lightning.experiment import load_experiment
from gdsd_lightning.data import PromptDataModule
from gdsd_lightning.errors import TrainingStopped
from gdsd_lightning.hub import wandb_reachable
from gdsd_lightning.models.build import MissingBaseModel, build_policy
from gdsd_lightning.module import DiffusionRLModule, SFTModule
from gdsd_lightning.runs import FINAL_MODEL, INTERRUPTED_CHECKPOINT, create_run_dir, require_file
from gdsd_lightning.tasks import task_from_config


def train(cfg: DictConfig) -> Path:
    """Train one experiment; returns its run directory."""
    L.seed_everything(cfg.seed, verbose=False)
    task = task_from_config(cfg.task)
    policy = build_policy(cfg)
    supervised = cfg.method.name == "sft"
    steps_per_batch = 1 if supervised else cfg.method.num_iterations
    module = (SFTModule if supervised else DiffusionRLModule)(cfg, policy, task)
    batch_size = cfg.batch_size if supervised else cfg.rollout.prompts_per_step
    datamodule = PromptDataModule(cfg, task, batch_size, steps_per_batch)
    datamodule.setup("fit")

    resume = str(require_file(cfg.resume, "resume checkpoint")) if cfg.resume else None
    run_dir = Path(resume).resolve().parents[1] if resume else create_run_dir(cfg)
    if rank_zero_only.rank == 0:
        save_config(cfg, run_dir / "config.yaml")
    history = ValHistory(run_dir, cfg.name)
    trainer = make_trainer(cfg, run_dir, [history, *make_callbacks(cfg, run_dir, supervised)], steps_per_batch)
    print(f"[gdsd] {cfg.name}: run directory {run_dir}", flush=True)
    if not resume:
        trainer.validate(module, datamodule=datamodule, verbose=False)   # the step-0 point of the curve
    stopped = None
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    except SIGTERMException:
        ckpt = run_dir / "checkpoints" / f"{INTERRUPTED_CHECKPOINT}.ckpt"
        print(f"[gdsd] {cfg.name}: SIGTERM at optimiser step {trainer.global_step}; saved {ckpt}. "
              f"Continue with: make train EXP={cfg.name} ARGS=\"resume={ckpt}\"", file=sys.stderr, flush=True)
        sys.exit(128 + signal.SIGTERM)
    except TrainingStopped as guard:
        stopped = guard       # the model as it is and the curve so far are still results
    if not history.history or history.history[-1][0] != trainer.global_step:
        trainer.validate(module, datamodule=datamodule, verbose=False)
    module.save_policy(run_dir / FINAL_MODEL)
    if trainer.is_global_zero:
        history.write_summary(trainer, stopped=str(stopped) if stopped else None)
        curve = ", ".join(f"{int(s)}: {a:.3f}" for s, a in history.history)
        print(f"[gdsd] {cfg.name}: val accuracy by step {{{curve}}}; model in {run_dir / FINAL_MODEL}", flush=True)
    finish_wandb_runs(trainer)
    if stopped:
        raise TrainingStopped(f"{stopped} (stopped run saved in {run_dir})")
    return run_dir


def base_overrides(overrides: list[str]) -> list[str]:
    """The overrides of an RL run that also apply to its SFT base: where runs and data live."""
    return [o for o in overrides if o.split("=")[0] in ("runs_dir", "task.data_dir")]


def train_with_base(experiment: str, overrides: list[str]) -> Path:
    """Train `experiment`; if its base model (model.init_from) is missing, train the base first."""
    cfg = load_experiment(experiment, overrides)
    try:
        return train(cfg)
    except MissingBaseModel as missing:
        print(f"[gdsd] base model {missing.experiment!r} not found: training it first "
              f"(`make train EXP={missing.experiment}`)", flush=True)
        train(load_experiment(missing.experiment, base_overrides(overrides)))
        return train(cfg)


def make_callbacks(cfg: DictConfig, run_dir: Path, supervised: bool) -> list[L.Callback]:
    """Checkpoints (periodic after each evaluation, best by val accuracy, on SIGTERM or an error)
    and, for RL, the rollout statistics and the optional reference sync."""
    checkpoints = run_dir / "checkpoints"
    callbacks = [
        ProgressBar(),
        CheckpointAfterEvaluation(cfg.trainer.checkpoint_every_n_steps, dirpath=checkpoints, filename="step{step}",
                                  auto_insert_metric_name=False, save_top_k=1, save_last="link"),
        ModelCheckpoint(dirpath=checkpoints, filename="best", monitor="val/accuracy", mode="max", save_top_k=1,
                        auto_insert_metric_name=False),
        # SIGTERM (pre-emption) or an error: Lightning stops after the current step; this saves it.
        OnExceptionCheckpoint(dirpath=checkpoints, filename=INTERRUPTED_CHECKPOINT),
    ]
    if not supervised:
        callbacks.append(RolloutStatistics(text_every_n_steps=cfg.trainer.val_every_n_steps))
        if cfg.trainer.ref_sync_every_n_steps > 0:
            callbacks.append(ReferenceSync(cfg.trainer.ref_sync_every_n_steps))
    return callbacks


def make_trainer(cfg: DictConfig, run_dir: Path, callbacks: list[L.Callback], steps_per_batch: int) -> L.Trainer:
    """The Lightning Trainer: FSDP2 through ModelParallelStrategy for trainer.strategy=fsdp (it writes
    sharded checkpoints itself), else Lightning's strategy with atomic checkpoint files."""
    t = cfg.trainer
    if t.strategy == "fsdp":
        ranks = int(t.devices) * t.num_nodes           # all of them data-parallel (fully sharded)
        strategy, plugins = ModelParallelStrategy(data_parallel_size=ranks, tensor_parallel_size=1), []
    else:
        strategy, plugins = t.strategy, [AtomicCheckpointIO()]
    return L.Trainer(
        max_steps=t.max_steps, max_epochs=-1, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=strategy, precision=t.precision, log_every_n_steps=t.log_every_n_steps,
        val_check_interval=max(1, t.val_every_n_steps // steps_per_batch), check_val_every_n_epoch=None,
        num_sanity_val_steps=0, reload_dataloaders_every_n_epochs=1, use_distributed_sampler=False, callbacks=callbacks,
        logger=make_loggers(cfg, run_dir), default_root_dir=str(run_dir), enable_model_summary=False,
        inference_mode=False, plugins=plugins,
    )


def make_loggers(cfg: DictConfig, run_dir: Path) -> list:
    """Lightning's loggers named in `trainer.logger` (comma-separated), all writing into the run
    directory: `tensorboard` (tensorboard/), `csv` (csv/metrics.csv, csv/samples.jsonl), `wandb`
    (wandb/; project `trainer.logger_project` or the experiment's name, run name the run
    directory's). W&B logs offline (sync later with `wandb sync`) when WANDB_MODE=offline or its
    server cannot be reached."""
    loggers = []
    for name in cfg.trainer.logger.split(","):
        if name == "tensorboard":
            loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="", version="tensorboard", default_hp_metric=False))
        elif name == "csv":
            loggers.append(CSVLogger(save_dir=str(run_dir), name="", version="csv"))
        elif name == "wandb":
            offline = not wandb_reachable()
            if offline:
                print(f"[gdsd] W&B: logging offline into {run_dir / 'wandb'} (sync later with `wandb sync`)", flush=True)
            loggers.append(WandbLogger(project=cfg.trainer.logger_project or cfg.name, name=run_dir.name,
                                       save_dir=str(run_dir), offline=offline,
                                       config=OmegaConf.to_container(cfg, resolve=True)))
    return loggers


def finish_wandb_runs(trainer: L.Trainer) -> None:
    """End this run's W&B run, so its files are complete and the next run in this process (compare)
    starts a new one instead of appending to it."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            logger.experiment.finish()
