"""Command line: `python -m gdsd_lightning COMMAND ...` (the Makefile's targets call it).

Every command that reads an experiment takes config overrides as key=value arguments anywhere
after the command (`trainer.max_steps=50 method.psi=10`; `extends=<file>` merges another YAML);
`python -m gdsd_lightning COMMAND --help` lists each command's options.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from gdsd_lightning.errors import UserError


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
    logging.getLogger("math_verify").setLevel(logging.ERROR)   # "Timeout during comparison": scored as wrong


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gdsd_lightning", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="The fast test suite is `make test` (pytest); `make test-slow` the slow one.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, usage_args: str = "", epilog: str = "") -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, epilog=epilog,
                              usage=f"python -m gdsd_lightning {name} {usage_args}".rstrip(),
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    experiment_help = "an experiment in experiments/ (see `list`) or a path to a YAML file"
    p_train = command("train", "train an experiment (SFT or RL); a missing base model is trained first",
                      "EXPERIMENT [key=value ...]",
                      "Writes runs/<experiment>/<run>/: config.yaml, the loggers' files (trainer.logger=tensorboard,\n"
                      "csv, wandb), checkpoints/, final/ and summary.json. Resume with resume=<.../last.ckpt>.\n"
                      "Example: python -m gdsd_lightning train gdsd_tiny_sudoku seed=1 trainer.logger=tensorboard,csv")
    p_train.add_argument("experiment", help=experiment_help)
    p_eval = command("eval", "evaluate a trained model at every generation length of its protocol: accuracy "
                             "(pass@k when sampling), generations.jsonl, summary.json",
                     "EXPERIMENT [--ckpt P] [--data F] [--out D] [--protocol P] [--checkpoint RULE] [key=value ...]",
                     "eval.protocol=papers is the releases' (lengths, steps, prompts, subset, lm-eval for GSM8K / MATH /\n"
                     "code), experiment the experiment's own; both files record it (docs/evaluation.md).\n"
                     "Example: python -m gdsd_lightning eval gdsd_llada_sudoku --data 4x4_test_sudoku.csv eval.lengths=[256]")
    p_eval.add_argument("experiment", help=experiment_help)
    p_eval.add_argument("--ckpt", help="saved model directory, Lightning .ckpt or run directory "
                                       "(default: the experiment's latest run)")
    p_eval.add_argument("--data", help="data file in the task's format (default: the test split; the papers' "
                                       "sudoku / countdown need the published test file)")
    p_eval.add_argument("--out", help="output directory (default: <run>/eval/<data>_<protocol>_<checkpoint rule>)")
    p_eval.add_argument("--protocol", choices=["papers", "experiment"],
                        help="papers: the releases' lengths, steps, prompts, subset and lm-eval tasks; experiment: "
                             "the experiment's sampler and prompts (default: eval.protocol of the experiment)")
    p_eval.add_argument("--checkpoint", choices=["final", "best_val", "best_test"],
                        help="the final model, the best by val accuracy, or the best on the test data itself "
                             "(the papers' 'best': optimistic) (default: eval.checkpoint)")
    p_report = command("report", "the papers' table (methods x tasks, per length and best) over eval summaries: "
                                 "markdown, CSV and a plot beside the published figures", "[SUMMARY|DIR ...] [--out D]")
    p_report.add_argument("summaries", nargs="*", default=["runs"],
                          help="summary.json files or directories searched for them (default: runs)")
    p_report.add_argument("--out", default="results/report", help="output directory (default: results/report)")
    p_compare = command("compare", "every RL method on one tiny task: one tuning rule (lr, then the KL anchor's beta), "
                        "seeds at the chosen setting, table and plots",
                        "[--task T] [--seeds N] [--methods a,b] [--lrs x,y] [--betas x,y] [--mu shared|recipe] "
                        "[--jobs N] [--out D] [--rollout-modes a,b] [key=value ...]",
                        "Finished runs with the same resolved config are reused. Writes <out>/<task>/compare.{csv,md},\n"
                        "sweep.csv, runs.csv, curves.png, test_accuracy.png, sweep.png.")
    p_compare.add_argument("--task", default="sudoku", help="sudoku or countdown (default: sudoku)")
    p_compare.add_argument("--seeds", type=int, default=3, help="seeds per method (default: 3)")
    p_compare.add_argument("--methods", help="comma-separated subset (default: every method with an experiment)")
    p_compare.add_argument("--lrs", help="comma-separated learning rates of the lr stage (default: compare.SWEEP_LRS)")
    p_compare.add_argument("--betas", help="comma-separated KL-anchor weights of the beta stage; the lr stage runs at "
                                           "their median (default: compare.SWEEP_BETAS)")
    p_compare.add_argument("--mu", default="shared", choices=["shared", "recipe"],
                           help="shared: mu = 1 for every method; recipe: each method's recipe mu, tuned at that mu")
    p_compare.add_argument("--jobs", type=int, default=1,
                           help="runs trained side by side, one torch thread each (default: 1)")
    p_compare.add_argument("--out", default="results", help="output directory (default: results)")
    p_compare.add_argument("--rollout-modes", help="comma-separated rollout modes (exact, threshold, cache, fast, "
                                                   "fast+tis, fast+mis: compare.ROLLOUT_MODES): every method at its "
                                                   "exact-tuned setting in each mode, into <out>/<task>_rollout_modes")
    p_bench = command("bench", "sampler throughput, loss-step time and memory; MFU with --device cuda",
                      "[--quick] [--device cpu|cuda] [--out D] [--peak-tflops F] [--modes M,...]")
    p_bench.add_argument("--quick", action="store_true", help="smaller settings, about a minute on 2 CPU cores")
    p_bench.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p_bench.add_argument("--out", default="results/bench", help="output directory (default: results/bench)")
    p_bench.add_argument("--peak-tflops", type=float, default=None,
                         help="the GPU's dense bf16 peak for MFU, if its name is not in bench.PEAK_TFLOPS")
    p_bench.add_argument("--modes", default=None,
                         help="comma-separated sampler modes (bench.SAMPLER_MODES, e.g. exact,kv_cache_prefix): run only "
                              "the trained tiny bases' comparison of them, written to <out>/trained_bases.{json,md}")
    p_data = command("make-data", "regenerate the frozen sudoku / countdown splits (deterministic)", "[--out D]")
    p_data.add_argument("--out", default="data", help="output directory (default: data)")
    command("list", "list the experiments with their descriptions")
    p_export = command("export", "write a trained llada / dream model in the authors' published format",
                       "MODEL OUT [--dtype bfloat16]")
    p_export.add_argument("model", help="a saved model directory, e.g. runs/<experiment>/latest/final (LoRA "
                                        "adapters are merged into the base weights)")
    p_export.add_argument("out", help="output directory: the authors' config.json, safetensors shards under their "
                                      "tensor names, the tokenizer and the base's remote-code files")
    p_export.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"],
                          help="dtype of the written weights (default: bfloat16, as published)")
    args, overrides = parser.parse_known_args(argv)   # key=value config overrides, anywhere
    unknown = [o for o in overrides if "=" not in o or o.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (config overrides look like key=value)")
    args.overrides = overrides

    quiet_libraries()
    try:
        if args.command == "train":
            from gdsd_lightning.train import train_with_base

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
            grids = {}
            for flag in ("lrs", "betas"):
                try:
                    grids[flag] = [float(v) for v in getattr(args, flag).split(",")] if getattr(args, flag) else None
                except ValueError:
                    raise UserError(f"--{flag} must be comma-separated numbers, got {getattr(args, flag)!r}") from None
            compare(args.task, args.seeds, methods, args.out, args.overrides, grids["lrs"], args.mu, args.jobs,
                    grids["betas"], args.rollout_modes.split(",") if args.rollout_modes else None)
        elif args.command == "bench":
            from gdsd_lightning.bench import bench

            bench(args.quick, args.device, args.out, args.peak_tflops, args.modes.split(",") if args.modes else None)
        elif args.command == "make-data":
            from gdsd_lightning.tasks.splits import GENERATED_TASKS, write_splits

            for name in GENERATED_TASKS:
                for path in write_splits(args.out, name):
                    print(f"wrote {path}")
        elif args.command == "export":
            import torch

            from gdsd_lightning.models import DiffusionLM
            from gdsd_lightning.models.published import write_published

            missing = write_published(DiffusionLM.load(args.model, getattr(torch, args.dtype)), args.out)
            print(f"exported {args.model} to {args.out} in the published format"
                  + (f"; copy {', '.join(missing)} there from the base's hub repository" if missing else ""))
        elif args.command == "list":
            from gdsd_lightning.config import describe_experiments

            print(describe_experiments())
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
