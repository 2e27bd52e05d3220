"""Command line: `python -m gdsd_lightning COMMAND ...` (the Makefile's targets call it).

Every command that reads an experiment takes config overrides as key=value arguments anywhere
after the command (`trainer.max_steps=50 method.psi=10`; `extends=<file>` merges another YAML);
`python -m gdsd_lightning COMMAND --help` lists each command's options.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings
from dataclasses import dataclass

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


def opt(*flags: str, **settings) -> tuple[tuple[str, ...], dict]:
    """One option of a command, as argparse's add_argument takes it; its dest is the name of the
    command function's parameter that receives it."""
    return flags, settings


def numbers(text: str) -> list[float]:
    """A comma-separated list of numbers (--lrs, --betas)."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers, got {text!r}") from None


def names(text: str) -> list[str]:
    return text.split(",")


@dataclass(frozen=True)
class Command:
    """A command: the function that runs it ("module:function", imported when chosen; called with the
    options by name, and `overrides` when it takes key=value overrides), its help and its options,
    from which argparse writes the usage line. What the function returns, when a string, is printed."""

    run: str
    help: str
    epilog: str = ""
    options: tuple = ()
    overrides: bool = False


EXPERIMENT = opt("experiment", help="an experiment in experiments/ (see `list`) or a path to a YAML file")
COMMANDS = {
    "train": Command(
        "gdsd_lightning.commands.train:train_with_base",
        "train an experiment (SFT or RL); a missing base model is trained first",
        "Writes runs/<experiment>/<run>/: config.yaml, the loggers' files (trainer.logger=tensorboard,\n"
        "csv, wandb), checkpoints/, final/ and summary.json. Resume with resume=<.../last.ckpt>.\n"
        "Example: python -m gdsd_lightning train gdsd_tiny_sudoku seed=1 trainer.logger=tensorboard,csv",
        (EXPERIMENT,), overrides=True),
    "eval": Command(
        "gdsd_lightning.commands.evaluate:evaluate_experiment",
        "evaluate a trained model at every generation length of its protocol: accuracy (pass@k when sampling), "
        "generations.jsonl, summary.json",
        "eval.protocol=papers is the releases' (lengths, steps, prompts, subset, lm-eval for GSM8K / MATH /\n"
        "code), experiment the experiment's own; both files record it (docs/evaluation.md).\n"
        "Example: python -m gdsd_lightning eval gdsd_llada_sudoku --data 4x4_test_sudoku.csv eval.lengths=[256]",
        (EXPERIMENT,
         opt("--ckpt", help="saved model directory, Lightning .ckpt or run directory (default: the experiment's "
                            "latest run)"),
         opt("--data", help="data file in the task's format (default: the test split; the papers' sudoku / "
                            "countdown need the published test file)"),
         opt("--out", help="output directory (default: <run>/eval/<data>_<protocol>_<checkpoint rule>)"),
         opt("--protocol", choices=["papers", "experiment"],
             help="papers: the releases' lengths, steps, prompts, subset and lm-eval tasks; experiment: the "
                  "experiment's sampler and prompts (default: eval.protocol of the experiment)"),
         opt("--checkpoint", choices=["final", "best_val", "best_test"],
             help="the final model, the best by val accuracy, or the best on the test data itself (the papers' "
                  "'best': optimistic) (default: eval.checkpoint)")),
        overrides=True),
    "report": Command(
        "gdsd_lightning.commands.report:report",
        "the papers' table (methods x tasks, per length and best) over eval summaries: markdown, CSV and a plot "
        "beside the published figures", "",
        (opt("paths", nargs="*", default=["runs"], metavar="summaries",
             help="summary.json files or directories searched for them (default: runs)"),
         opt("--out", default="results/report", help="output directory (default: results/report)"))),
    "compare": Command(
        "gdsd_lightning.commands.compare:compare",
        "every RL method on one tiny task: one tuning rule (lr, then the KL anchor's beta), seeds at the chosen "
        "setting, table and plots",
        "Finished runs with the same resolved config are reused. Writes <out>/<task>/compare.{csv,md},\n"
        "sweep.csv, runs.csv, curves.png, test_accuracy.png, sweep.png.",
        (opt("--task", default="sudoku", help="sudoku or countdown (default: sudoku)"),
         opt("--seeds", type=int, default=3, help="seeds per method (default: 3)"),
         opt("--methods", type=names, help="comma-separated subset (default: every method with an experiment)"),
         opt("--lrs", type=numbers, help="comma-separated learning rates of the lr stage (default: "
                                         "compare.SWEEP_LRS)"),
         opt("--betas", type=numbers, help="comma-separated KL-anchor weights of the beta stage; the lr stage runs "
                                           "at their median (default: compare.SWEEP_BETAS)"),
         opt("--mu", default="shared", choices=["shared", "recipe"],
             help="shared: mu = 1 for every method; recipe: each method's recipe mu, tuned at that mu"),
         opt("--jobs", type=int, default=1, help="runs trained side by side, one torch thread each (default: 1)"),
         opt("--out", default="results", help="output directory (default: results)"),
         opt("--rollout-modes", type=names, help="comma-separated rollout modes (exact, threshold, cache, fast, "
                                                 "fast+tis, fast+mis: compare.ROLLOUT_MODES): every method at its "
                                                 "exact-tuned setting in each mode, into <out>/<task>_rollout_modes")),
        overrides=True),
    "bench": Command(
        "gdsd_lightning.commands.bench:bench",
        "sampler throughput, loss-step time and memory; MFU with --device cuda",
"",
        (opt("--quick", action="store_true", help="smaller settings, about a minute on 2 CPU cores"),
         opt("--device", default="cpu", choices=["cpu", "cuda"]),
         opt("--out", default="results/bench", help="output directory (default: results/bench)"),
         opt("--peak-tflops", dest="peak", type=float, default=None, metavar="TFLOPS",
             help="the GPU's dense bf16 peak for MFU, if its name is not in bench.PEAK_TFLOPS"),
         opt("--modes", type=names, help="comma-separated sampler modes (bench.SAMPLER_MODES, e.g. "
                                         "exact,kv_cache_prefix): run only the trained tiny bases' comparison of "
                                         "them, written to <out>/trained_bases.{json,md}"))),
    "dopsd-probe": Command(
        "gdsd_lightning.commands.dopsd_probe:dopsd_probe",
        "what d-OPSD's teacher (the self-future) predicts better than its student, on the starting model's rollouts",
        "Writes <out>/dopsd_probe.json. Example: python -m gdsd_lightning dopsd-probe dopsd_tiny_sudoku --rollouts 8",
        (EXPERIMENT,
         opt("--rollouts", type=int, default=4, help="rollout batches to probe (default: 4)"),
         opt("--split", default="train", help="the split whose prompts are rolled out (default: train)"),
         opt("--out", default="results/dopsd_probe", help="output directory (default: results/dopsd_probe)")),
        overrides=True),
    "make-data": Command(
        "gdsd_lightning.commands.data:make_data",
        "regenerate the frozen sudoku / countdown splits (deterministic)", "",
        (opt("--out", default="data", help="output directory (default: data)"),)),
    "list": Command("gdsd_lightning.config:describe_experiments", "list the experiments with their descriptions"),
    "export": Command(
        "gdsd_lightning.commands.models:export",
        "write a trained llada / dream model in the authors' published format", "",
        (opt("model", help="a saved model directory, e.g. runs/<experiment>/latest/final (LoRA adapters are merged "
                           "into the base weights)"),
         opt("out", help="output directory: the authors' config.json, safetensors shards under their tensor names, "
                         "the tokenizer and the base's remote-code files"),
         opt("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"],
             help="dtype of the written weights (default: bfloat16, as published)"))),
    "toy-checkpoint": Command(
        "gdsd_lightning.commands.models:toy_checkpoint",
        "write a tiny random checkpoint in the published format of a real-model recipe's family and print its "
        "directory (`make smoke-real` trains the recipe on it)", "",
        (EXPERIMENT, opt("--out", default="runs/toy_published", help="parent directory (default: "
                                                                     "runs/toy_published)"))),
}


def parser() -> argparse.ArgumentParser:
    """The argument parser of every command in COMMANDS."""
    top = argparse.ArgumentParser(prog="python -m gdsd_lightning", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter,
                                  epilog="The fast test suite is `make test` (pytest); `make test-slow` the slow one.")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help, epilog=command.epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        for flags, settings in command.options:
            p.add_argument(*flags, **settings)
        if command.overrides:   # parsed apart (parse_known_args): named in the usage line only
            p.usage = p.format_usage().removeprefix("usage: ").rstrip() + " [key=value ...]"
    return top


def main(argv: list[str] | None = None) -> None:
    top = parser()
    args, overrides = top.parse_known_args(argv)   # key=value config overrides, anywhere
    command = COMMANDS[args.command]
    unknown = [o for o in overrides if "=" not in o or o.startswith("-")]
    if unknown:
        top.error(f"unrecognized arguments: {' '.join(unknown)} (config overrides look like key=value)")
    if overrides and not command.overrides:
        top.error(f"{args.command} reads no experiment, so it takes no key=value overrides: {' '.join(overrides)}")
    options = {key: value for key, value in vars(args).items() if key != "command"}
    if command.overrides:
        options["overrides"] = overrides
    quiet_libraries()
    module, function = command.run.split(":")
    try:
        result = getattr(importlib.import_module(module), function)(**options)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    if isinstance(result, str):
        print(result)
