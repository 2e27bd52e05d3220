"""Command line: `python -m gdsd_lightning {train,eval,make-data,list} ...`.

    train EXP [key=value ...]                         train an experiment (SFT or RL)
    list                                              the experiments in experiments/
    eval EXP [--ckpt P] [--data F] [--out D] [--protocol papers|experiment] [--checkpoint RULE] [k=v]
                                                      evaluation at every length, protocol recorded
    report [SUMMARY|DIR ...] [--out D]                the papers' table and plot over eval summaries
    compare [--task T] [--seeds N] [--methods a,b] [--out results] [k=v]
                                                      every RL method x seeds: table and plots
    bench [--quick] [--device cpu|cuda] [--out D] [--peak-tflops F]
                                                      sampler / loss-pass speed and memory; MFU on CUDA
    make-data [--out data]                            regenerate the frozen task splits
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import warnings
from pathlib import Path

from gdsd_lightning.errors import TrainingStopped, UserError

INTERRUPTED_CHECKPOINT = "interrupted"   # checkpoints/interrupted.ckpt, written on SIGTERM or an error


def quiet_libraries() -> None:
    """Keep the console to our progress bars and sentences."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*ModelCheckpoint with manual optimization.*")  # post-step state is wanted
    # With an OnExceptionCheckpoint, fit(ckpt_path=None) looks for a "last" checkpoint to resume from; a new run's
    # directory never has one (resuming is explicit: resume=...), so its two warnings say nothing.
    warnings.filterwarnings("ignore", r".*\.fit\(ckpt_path=None\)` was called without a model.*")
    warnings.filterwarnings("ignore", r".*there is no last checkpoint available.*")
    # a resumed run writes on into its own checkpoint directory
    warnings.filterwarnings("ignore", r".*Checkpoint directory .* exists and is not empty.*")
    # data.ResumableShuffle starts a resumed run at its next batch, which Lightning cannot see
    warnings.filterwarnings("ignore", r".*your dataloader is not resumable.*")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


def train(cfg) -> Path:
    """Train one experiment; returns its run directory."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning.pytorch.strategies import ModelParallelStrategy
    from lightning.pytorch.utilities import rank_zero_only
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from gdsd_lightning.callbacks import (AtomicCheckpointIO, CheckpointAfterEvaluation, ReferenceSync,
                                          RolloutStatistics, ValHistory)
    from gdsd_lightning.config import save_config
    from gdsd_lightning.data import PromptDataModule
    from gdsd_lightning.models.build import build_policy
    from gdsd_lightning.module import DiffusionRLModule, SFTModule
    from gdsd_lightning.runs import FINAL_MODEL, create_run_dir, require_file
    from gdsd_lightning.tasks import get_task

    L.seed_everything(cfg.seed, verbose=False)
    task = get_task(cfg.task.name)
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
    callbacks = [
        history,
        CheckpointAfterEvaluation(cfg.trainer.checkpoint_every_n_steps, dirpath=run_dir / "checkpoints",
                                  filename="step{step}", auto_insert_metric_name=False, save_top_k=1, save_last="link"),
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor="val/accuracy", mode="max",
                        save_top_k=1, auto_insert_metric_name=False),
        # SIGTERM (pre-emption) or an error: Lightning stops after the current step; this saves it.
        OnExceptionCheckpoint(dirpath=run_dir / "checkpoints", filename=INTERRUPTED_CHECKPOINT),
    ]
    if not supervised:
        callbacks.append(RolloutStatistics(text_every_n_steps=cfg.trainer.val_every_n_steps))
        if cfg.trainer.ref_sync_every_n_steps > 0:
            callbacks.append(ReferenceSync(cfg.trainer.ref_sync_every_n_steps))
    t = cfg.trainer
    if t.strategy == "fsdp":   # FSDP2; sharded checkpoints are written by the strategy itself
        ranks = int(t.devices) * t.num_nodes           # all of them data-parallel (fully sharded)
        strategy, plugins = ModelParallelStrategy(data_parallel_size=ranks, tensor_parallel_size=1), []
    else:
        strategy, plugins = t.strategy, [AtomicCheckpointIO()]
    trainer = L.Trainer(
        max_steps=t.max_steps, max_epochs=-1, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=strategy, precision=t.precision, log_every_n_steps=t.log_every_n_steps,
        val_check_interval=max(1, t.val_every_n_steps // steps_per_batch), check_val_every_n_epoch=None,
        num_sanity_val_steps=0, reload_dataloaders_every_n_epochs=1, use_distributed_sampler=False, callbacks=callbacks,
        logger=TensorBoardLogger(save_dir=str(run_dir), name="", version="tensorboard", default_hp_metric=False),
        default_root_dir=str(run_dir), enable_model_summary=False, inference_mode=False,
        plugins=plugins,
    )
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
    if stopped:
        raise TrainingStopped(f"{stopped} (stopped run saved in {run_dir})")
    return run_dir


def train_with_base(name: str, overrides: list[str]) -> Path:
    """Train `name`; if its base model (model.init_from) is missing, train the base first."""
    from gdsd_lightning.config import load_experiment
    from gdsd_lightning.models.build import MissingBaseModel

    cfg = load_experiment(name, overrides)
    try:
        return train(cfg)
    except MissingBaseModel as missing:
        print(f"[gdsd] base model {missing.experiment!r} not found: training it first "
              f"(`make train EXP={missing.experiment}`)", flush=True)
        base_overrides = [o for o in overrides if o.split("=")[0] in ("runs_dir", "task.data_dir")]
        train(load_experiment(missing.experiment, base_overrides))
        return train(cfg)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gdsd_lightning", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train an experiment")
    p_train.add_argument("experiment")
    p_eval = sub.add_parser("eval", help="evaluate a trained model at every generation length of a protocol",
                            description="Evaluate under eval.protocol (docs/evaluation.md): every length reported "
                                        "and the best; generations.jsonl and summary.json record the protocol.")
    p_eval.add_argument("experiment")
    p_eval.add_argument("--ckpt", help="saved model directory, Lightning .ckpt or run directory "
                                       "(default: the experiment's latest run)")
    p_eval.add_argument("--data", help="data file in the task's format (default: the test split; the papers' "
                                       "sudoku / countdown need the published test file)")
    p_eval.add_argument("--out", help="output directory for generations.jsonl and summary.json "
                                      "(default: <run>/eval/<data>_<protocol>_<checkpoint rule>)")
    p_eval.add_argument("--protocol", choices=["papers", "experiment"],
                        help="papers: the releases' lengths, steps, prompts, subset and lm-eval tasks; experiment: "
                             "the experiment's sampler and prompts (default: eval.protocol of the experiment)")
    p_eval.add_argument("--checkpoint", choices=["final", "best_val", "best_test"],
                        help="final model, the best by val accuracy, or the best on the test data itself "
                             "(the papers' 'best': optimistic) (default: eval.checkpoint)")
    p_report = sub.add_parser("report", help="the papers' table (methods x tasks, per length and best) over eval "
                                             "summaries, as markdown, CSV and a plot beside the published figures")
    p_report.add_argument("summaries", nargs="*", default=["runs"],
                          help="summary.json files or directories searched for them (default: runs)")
    p_report.add_argument("--out", default="results/report", help="output directory (default: results/report)")
    p_compare = sub.add_parser("compare", help="train and evaluate every RL method on one tiny task")
    p_compare.add_argument("--task", default="sudoku")
    p_compare.add_argument("--seeds", type=int, default=3)
    p_compare.add_argument("--methods", help="comma-separated subset (default: every method with an experiment)")
    p_compare.add_argument("--out", default="results")
    p_bench = sub.add_parser("bench", help="sampler throughput, loss-step time and memory")
    p_bench.add_argument("--quick", action="store_true", help="smaller settings, about a minute on 2 CPU cores")
    p_bench.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p_bench.add_argument("--out", default="results/bench")
    p_bench.add_argument("--peak-tflops", type=float, default=None,
                         help="the GPU's dense bf16 peak for MFU, if its name is not in bench.PEAK_TFLOPS")
    p_data = sub.add_parser("make-data", help="regenerate the frozen sudoku/countdown splits")
    p_data.add_argument("--out", default="data")
    sub.add_parser("list", help="list the experiments")
    args, overrides = parser.parse_known_args(argv)   # key=value config overrides, anywhere
    unknown = [o for o in overrides if "=" not in o or o.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (config overrides look like key=value)")
    args.overrides = overrides

    quiet_libraries()
    try:
        if args.command == "train":
            train_with_base(args.experiment, args.overrides)
        elif args.command == "eval":
            from gdsd_lightning.config import load_experiment
            from gdsd_lightning.evaluate import evaluate, summary_line

            chosen = [f"eval.{key}={value}" for key in ("protocol", "checkpoint") if (value := getattr(args, key))]
            cfg = load_experiment(args.experiment, [*args.overrides, *chosen])
            print(summary_line(evaluate(cfg, args.ckpt, args.data, args.out)))
        elif args.command == "report":
            from gdsd_lightning.report import report

            print(report(args.summaries, args.out))
        elif args.command == "compare":
            from gdsd_lightning.compare import compare

            methods = args.methods.split(",") if args.methods else None
            compare(args.task, args.seeds, methods, args.out, args.overrides)
        elif args.command == "bench":
            from gdsd_lightning.bench import bench

            bench(args.quick, args.device, args.out, args.peak_tflops)
        elif args.command == "make-data":
            from gdsd_lightning.tasks.splits import GENERATED_TASKS, write_splits

            for name in GENERATED_TASKS:
                for path in write_splits(args.out, name):
                    print(f"wrote {path}")
        elif args.command == "list":
            from gdsd_lightning.config import list_experiments

            print("\n".join(list_experiments()))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
