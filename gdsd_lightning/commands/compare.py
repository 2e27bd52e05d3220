"""`python -m gdsd_lightning compare`: every RL method on one tiny task, each at the setting that
one tuning rule, the same for every method, chose from the same grid; then over seeds; one table
and the plots.

    for each method with an experiment <method>_tiny_<task> (the shared schedule merged over it):
        lr stage:   seed 0 at every lr of --lrs; a method with a KL anchor to the reference
                    (Objective.kl_anchor: GDSD, GDSD-TLC, ESPO, diffu-GRPO) at the median beta of --betas
        beta stage: a method with a KL anchor, seed 0 at the lr the lr stage chose and every other beta
        each stage chooses the run that ends with the best val <headline> (mean of its last two
            evaluations) among its runs that did not collapse (ties: the smaller lr, then beta)
        seeds 1 .. N-1 at the chosen setting (seed 0 is the sweep's run)
    every run: reuse a finished run with the same resolved config, or train one (`--jobs N`: N
    at a time, one torch thread each); evaluate its final model and its best-by-val checkpoint
    on the test split (greedy)
    -> <out>/<task>/sweep.csv    one row per (method, lr, beta): the val figures the choice used
       <out>/<task>/runs.csv     one row per (method, seed) at the chosen setting
       <out>/<task>/compare.csv  one row per method: test accuracy and <headline> mean/std, the
                                 base's, rollouts and optimiser steps to the target, collapses,
                                 entropy, time
       <out>/<task>/compare.md   the tables, the rule, the grid, the choice and why, the plots
       <out>/<task>/curves.png, test_accuracy.png, sweep.png

The headline metric is the task's full-solve rate where it has one (sudoku: `solve_rate`), else
its accuracy (countdown). A run has *collapsed* when its final val headline is below
COLLAPSE_FRACTION of its start (the base's). The *target* is the base's val headline plus
TARGET_GAIN; `rollouts_to_target` is the first evaluation at or above it. Two regimes: `--mu
shared` (mu = 1 for every method: equal rollouts and optimiser steps) and `--mu recipe` (each
method's recipe mu, the `num_iterations` default of its Config, on the same rollout budget, tuned
by the same rule at that mu) into <out>/<task>_recipe_mu/.
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from gdsd_lightning.commands.bench import FAST_THRESHOLD
from gdsd_lightning.config import list_experiments
from gdsd_lightning.experiment import load_experiment, load_run_config
from gdsd_lightning.errors import TrainingStopped, UserError
from gdsd_lightning.objectives import OBJECTIVES, RL_METHODS
from gdsd_lightning.runs import FINAL_MODEL, latest_final_model, runs_root

NOT_COMPARED = ("run_name", "resume")      # keys that name a run rather than define it
# Merged over every compared experiment: the same optimiser, schedule and rollouts for all methods, whatever an
# experiment sets for its own runs (gdsd_tiny_sudoku, `make train`'s demo, has its own lr).
SHARED_SCHEDULE = "extends=_base/rl_tiny_schedule.yaml"
SWEEP_LRS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)   # the default --lrs: every method's lr stage
SWEEP_BETAS = (0.0, 0.05, 0.5)             # the default --betas: the KL-anchor weights of the beta stage
COLLAPSE_FRACTION = 0.5                    # collapsed: final val headline < this x its start
TARGET_GAIN = 0.10                         # rollouts_to_target: first val headline >= start + this
SMOOTHING = 25                             # rollouts in the moving average of the reward plot
THRESHOLD = f"rollout.sampler.fast_threshold={FAST_THRESHOLD}"
CACHE = "rollout.sampler.kv_cache=true"
SOME_MEASURED = "rollout.mismatch_every=10"     # the mismatch measured on every 10th rollout
ROLLOUT_MODES = {                          # --rollout-modes: how the rollouts are drawn (evaluation stays exact)
    "exact": [],
    "threshold": [THRESHOLD, SOME_MEASURED],            # exact probabilities, another schedule
    "cache": [CACHE, SOME_MEASURED],                    # the exact schedule, approximate probabilities
    "fast": [THRESHOLD, CACHE, SOME_MEASURED],
    "fast+tis": [THRESHOLD, CACHE, "rollout.importance_correction=tis"],
    "fast+mis": [THRESHOLD, CACHE, "rollout.importance_correction=mis"],
}
NOTES = """Columns: `final_*` = test metrics (greedy) of the final model, `best_*` = of the best-by-val checkpoint,
mean and std over seeds; `base_*` = the SFT base on the same test split; `rollouts_to_target` = rollouts until the val
{headline} first reached the base's val {headline} + {gain} (mean over the `reached_target` seeds that did);
`collapsed` = seeds whose final val {headline} fell below {collapse} x its start; `entropy_start` / `entropy_end` =
mean per-token entropy of the rollouts over the first / last {smooth}; `reward_auc` = mean rollout reward over
training; `best_step_mean` = optimiser step of the best val accuracy (0: the base itself was best);
`wall_time_s` = training time per run; `steps` = optimiser steps reached (mean over seeds); `stopped_early` = seeds a
guard stopped before the end (listed below the table). d-OPSD's rollout reward is that of the kept attempt (best of
`passk`), so its reward curve and `reward_auc` are not comparable with the others'; it gets the same rollout batches,
and those its gate rejects still step on a zero loss (as in the release), so it takes the same `steps`.
"""


@dataclass
class RunResult:
    method: str
    lr: float
    beta: float | None                     # the KL-anchor weight (None: the method has no anchor)
    seed: int
    run_dir: Path
    steps: int
    rollouts: int
    wall_time_s: float
    final: dict[str, float]                # test metrics of the final model
    best: dict[str, float]                 # test metrics of the best-by-val checkpoint
    best_step: int                         # optimiser step of the best val accuracy
    val_curve: list[dict]                  # per evaluation: step, rollouts, seconds and the val metrics
    rollout_curves: dict[str, list[tuple[int, float, float]]] = field(default_factory=dict)
    # tag -> (rollouts, seconds since training began, value) per rollout: reward_mean, entropy
    stopped: str | None = None             # why a guard ended the run before max_steps
    rollout_mode: str = "exact"            # ROLLOUT_MODES
    rollout_records: list[dict] = field(default_factory=list)   # summary.json's rollout_curve: seconds, mismatch

    @property
    def rollout_seconds(self) -> float | None:
        """Sampling seconds of the whole run (None: a run from before they were recorded)."""
        return sum(r["seconds"] for r in self.rollout_records) if self.rollout_records else None

    @property
    def unmeasured_rollout_seconds(self) -> float | None:
        """Mean seconds of the rollouts drawn without the mismatch measurement (what the sampler
        alone costs); None when every rollout was measured or none was recorded."""
        plain = [r["seconds"] for r in self.rollout_records if "mean_abs_log_ratio" not in r]
        return statistics.fmean(plain) if plain else None

    @property
    def setting(self) -> str:
        return f"lr {self.lr:g}" + ("" if self.beta is None else f", beta {self.beta:g}")

    def val(self, metric: str) -> list[float]:
        return [point[metric] for point in self.val_curve]

    def val_end(self, metric: str) -> float:
        """Mean of the last two evaluations (one when there is only one)."""
        return statistics.fmean(self.val(metric)[-2:])

    def collapsed(self, metric: str) -> bool:
        values = self.val(metric)
        return values[-1] < COLLAPSE_FRACTION * values[0]

    def to_target(self, metric: str, target: float) -> dict | None:
        """The first evaluation at or above `target`, or None."""
        return next((point for point in self.val_curve if point[metric] >= target), None)

    def rollout_mean(self, tag: str, first: bool) -> float:
        values = [v for _, _, v in self.rollout_curves.get(tag, [])]
        chunk = values[:SMOOTHING] if first else values[-SMOOTHING:]
        return statistics.fmean(chunk) if chunk else float("nan")


def experiments_for(task: str, methods: list[str] | None) -> dict[str, str]:
    """method -> experiment name, for every method that has a <method>_tiny_<task> experiment."""
    known = set(list_experiments())
    available = {m: f"{m}_tiny_{task}" for m in RL_METHODS if f"{m}_tiny_{task}" in known}
    if not available:
        raise UserError(f"no <method>_tiny_{task} experiments in experiments/; is {task!r} a tiny task?")
    if methods:
        missing = [m for m in methods if m not in available]
        if missing:
            raise UserError(f"no tiny {task} experiment for {', '.join(missing)}; available: {', '.join(available)}")
        available = {m: available[m] for m in methods}
    return available


def headline_metric(task: str) -> str:
    """The task's full-solve rate where it reports one, else its accuracy."""
    from gdsd_lightning.tasks import get_task

    return "solve_rate" if "solve_rate" in get_task(task).metric_names else "accuracy"


def defining(cfg: DictConfig) -> dict:
    """The resolved config without the keys that only name a run."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    return {k: v for k, v in plain.items() if k not in NOT_COMPARED}


def finished_run(cfg: DictConfig) -> Path | None:
    """The newest run of `cfg.name` with the same defining config that reached max_steps, spent
    its rollout budget, or was stopped by a guard (rerunning it would stop the same way)."""
    experiment_dir = runs_root(cfg) / cfg.name
    wanted = defining(cfg)
    for config_file in sorted(experiment_dir.glob("*/config.yaml"), reverse=True):
        run_dir = config_file.parent
        summary = run_dir / "summary.json"
        if not (summary.is_file() and (run_dir / FINAL_MODEL).is_dir()):
            continue
        ended = json.loads(summary.read_text())
        budget_spent = cfg.trainer.max_rollouts is not None and ended.get("rollouts", 0) >= cfg.trainer.max_rollouts
        if ended.get("steps") != cfg.trainer.max_steps and not ended.get("stopped") and not budget_spent:
            continue
        try:
            saved = load_run_config(config_file)
        except UserError:          # a key that no longer exists: not the same experiment any more
            continue
        if defining(saved) == wanted:
            return run_dir
    return None


def test_metrics(cfg: DictConfig, ckpt: Path, out_dir: Path) -> dict[str, float]:
    """Greedy test metrics of `ckpt` (accuracy, reward, the task's extras), read back from
    out_dir/summary.json when already computed."""
    from gdsd_lightning.commands.evaluate import evaluate
    from gdsd_lightning.tasks import get_task

    summary = out_dir / "summary.json"
    computed = json.loads(summary.read_text()) if summary.is_file() else {}
    if computed.get("checkpoint") != str(ckpt):
        computed = evaluate(cfg, str(ckpt), None, str(out_dir))
    at_length = computed["results"][cfg.task.name]["best"]      # the experiment protocol: one length
    return {key: at_length[key] for key in get_task(cfg.task.name).metric_names}


def rollout_curves(run_dir: Path, fit_started: float) -> dict[str, list[tuple[int, float, float]]]:
    """Per rollout statistic: (rollouts so far, seconds since training began, value) from the run's
    TensorBoard events (one event per rollout batch)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    return {tag: [(i + 1, e.wall_time - fit_started, e.value) for i, e in enumerate(events.Scalars(f"rollout/{tag}"))]
            for tag in ("reward_mean", "entropy") if f"rollout/{tag}" in tags}


def run_one(method: str, experiment: str, lr: float, beta: float | None, seed: int, overrides: list[str],
            rollout_mode: str = "exact") -> RunResult:
    """Train or reuse one run and test it. "Best" is the best-by-val model: the base itself when
    no evaluation during training beat step 0, else checkpoints/best.ckpt."""
    from gdsd_lightning.commands.train import train_with_base

    anchor = [] if beta is None else [f"method.beta={beta}"]
    run_overrides = [*overrides, *ROLLOUT_MODES[rollout_mode], f"optim.lr={lr}", *anchor, f"seed={seed}"]
    cfg = load_experiment(experiment, run_overrides)
    run_dir = finished_run(cfg)
    what = f"{experiment} lr {lr:g}{'' if beta is None else f' beta {beta:g}'} seed {seed} ({rollout_mode} rollouts)"
    if run_dir is None:
        print(f"[compare] training {what}", flush=True)
        mu = cfg.method.num_iterations
        mode = "" if rollout_mode == "exact" else "_" + rollout_mode.replace("+", "_")
        name = f"lr{lr:g}{'' if beta is None else f'_beta{beta:g}'}{'' if mu == 1 else f'_mu{mu}'}{mode}_seed{seed}"
        try:
            run_dir = train_with_base(experiment, [*run_overrides, f"run_name={name}"])
        except TrainingStopped as stopped:
            print(f"[compare] {what} stopped early: {stopped}", flush=True)
            run_dir = finished_run(cfg)
    else:
        print(f"[compare] reusing {run_dir}", flush=True)
    if run_dir.is_absolute() and run_dir.is_relative_to(Path.cwd()):
        run_dir = run_dir.relative_to(Path.cwd())       # the tables name runs as `make` users see them
    summary = json.loads((run_dir / "summary.json").read_text())
    best_ckpt = run_dir / "checkpoints" / "best.ckpt"
    final = test_metrics(cfg, run_dir / FINAL_MODEL, run_dir / "test" / "final")
    best = base_metrics(experiment, overrides) if summary["best_step"] == 0 else None
    if best is None:
        best = test_metrics(cfg, best_ckpt, run_dir / "test" / "best") if best_ckpt.is_file() else final
    return RunResult(method, lr, beta, seed, run_dir, summary["steps"], summary["rollouts"], summary["wall_time_s"],
                     final, best, summary["best_step"], summary["val_curve"],
                     rollout_curves(run_dir, summary["fit_started"]), summary.get("stopped"), rollout_mode,
                     summary.get("rollout_curve", []))


def base_model(experiment: str, overrides: list[str]) -> tuple[DictConfig, Path | None] | None:
    """The config of the SFT base `experiment` starts from and its newest final model (None when
    not trained yet); None when the experiment has no base."""
    base = load_experiment(experiment, overrides).model.init_from
    if base is None:
        return None
    from gdsd_lightning.commands.train import base_overrides

    base_cfg = load_experiment(base, base_overrides(overrides))
    return base_cfg, latest_final_model(base_cfg.runs_dir, base)


def base_metrics(experiment: str, overrides: list[str]) -> dict[str, float] | None:
    """Test metrics of the SFT base every method starts from (None when there is no base)."""
    base_cfg, final = base_model(experiment, overrides) or (None, None)
    return test_metrics(base_cfg, final, final.parent / "test" / "final") if final else None


def has_kl_anchor(experiment: str, overrides: list[str]) -> bool:
    """Whether the experiment's objective has a KL-to-reference term weighted by `method.beta`."""
    return OBJECTIVES[load_experiment(experiment, overrides).method.name].kl_anchor


def choose(runs: list[RunResult], metric: str) -> tuple[RunResult, str]:
    """The run with the best val `metric` at the end among those that did not collapse (among all
    of them if every one collapsed; ties: the smaller lr, then the smaller beta), and why."""
    standing = [r for r in runs if not r.collapsed(metric)]
    chosen = max(sorted(standing or runs, key=lambda r: (r.lr, r.beta or 0.0)), key=lambda r: round(r.val_end(metric), 4))
    why = f"best val {metric} at the end, {chosen.val_end(metric):.3f}"
    collapsed = [r.setting for r in runs if r not in standing]
    if collapsed:
        why += f"; collapsed in the sweep: {'; '.join(collapsed)}" + ("" if standing else " (every setting)")
    return chosen, why


def lr_stage_beta(betas: list[float]) -> float:
    """The beta at which the lr stage runs the methods with a KL anchor: the grid's median (low)."""
    return statistics.median_low(betas)


def tune(experiments: dict[str, str], lrs: list[float], betas: list[float], overrides: dict[str, list[str]],
         metric: str, jobs: int) -> tuple[list[RunResult], dict[str, RunResult], dict[str, str]]:
    """The two stages of the rule (module docstring) at seed 0: every sweep run, and per method
    the chosen run and why."""
    anchored = {m for m, e in experiments.items() if has_kl_anchor(e, overrides[m])}
    lr_beta = lr_stage_beta(betas)
    sweep = run_all([(m, e, lr, lr_beta if m in anchored else None, 0, overrides[m])
                     for m, e in experiments.items() for lr in lrs], jobs)
    chosen = {m: choose([r for r in sweep if r.method == m], metric)[0] for m in experiments}
    sweep += run_all([(m, experiments[m], chosen[m].lr, beta, 0, overrides[m])
                      for m in experiments if m in anchored for beta in betas if beta != lr_beta], jobs)
    picks = {m: choose([r for r in sweep if r.method == m], metric) for m in experiments}
    return sweep, {m: run for m, (run, _) in picks.items()}, {m: why for m, (_, why) in picks.items()}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(results: list[RunResult], metric: str, base: dict | None, base_val: float) -> list[dict]:
    rows = []
    target = base_val + TARGET_GAIN
    for method in dict.fromkeys(r.method for r in results):
        runs = [r for r in results if r.method == method]
        row = {"method": method, "lr": runs[0].lr, "beta": runs[0].beta, "seeds": len(runs)}
        for which in ("final", "best"):
            for key in dict.fromkeys(("accuracy", metric)):
                mean, std = mean_std([getattr(r, which)[key] for r in runs])
                row[f"{which}_{key}_mean"], row[f"{which}_{key}_std"] = round(mean, 4), round(std, 4)
        if metric == "accuracy":   # the machine-readable solve-rate columns exist for every task
            row["final_solve_rate_mean"], row["final_solve_rate_std"] = row["final_accuracy_mean"], row["final_accuracy_std"]
        row["base_accuracy"] = base["accuracy"] if base else None
        row["base_solve_rate"] = base[metric] if base else None
        reached = [hit for hit in (r.to_target(metric, target) for r in runs) if hit is not None]
        row.update({
            "rollouts_to_target": round(statistics.fmean(h["rollouts"] for h in reached)) if reached else None,
            "steps_to_target": round(statistics.fmean(h["step"] for h in reached)) if reached else None,
            "seconds_to_target": round(statistics.fmean(h["seconds"] for h in reached), 1) if reached else None,
            "reached_target": len(reached),
            "collapsed": sum(r.collapsed(metric) for r in runs),
            "entropy_start": round(statistics.fmean(r.rollout_mean("entropy", True) for r in runs), 3),
            "entropy_end": round(statistics.fmean(r.rollout_mean("entropy", False) for r in runs), 3),
            "reward_auc": round(statistics.fmean(statistics.fmean(v for _, _, v in r.rollout_curves["reward_mean"])
                                                 for r in runs), 4),
            "best_step_mean": round(statistics.fmean(r.best_step for r in runs), 1),
            "steps": round(statistics.fmean(r.steps for r in runs)),
            "stopped_early": sum(r.stopped is not None for r in runs),
            "wall_time_s": round(statistics.fmean(r.wall_time_s for r in runs), 1),
        })
        rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def band(curves: list[list[tuple[float, float]]], smooth: int = 1):
    """x, mean and std over seeds of (x, value) curves, each interpolated onto the union of their
    x within the range they share (moving average of `smooth` points)."""
    import numpy as np

    low, high = max(c[0][0] for c in curves), min(c[-1][0] for c in curves)
    xs = sorted({x for c in curves for x, _ in c if low <= x <= high})
    values = np.array([np.interp(xs, [x for x, _ in c], [v for _, v in c]) for c in curves])
    if smooth > 1 and values.shape[1] >= smooth:
        kernel = np.ones(smooth) / smooth
        values = np.array([np.convolve(v, kernel, mode="valid") for v in values])
        xs = xs[smooth - 1:]
    return np.array(xs), values.mean(0), values.std(0)


def plot(results: list[RunResult], rows: list[dict], sweep: list[RunResult], metric: str, base: dict | None,
         task: str, out_dir: Path, lr_beta: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [row["method"] for row in rows]
    colours = {m: f"C{i}" for i, m in enumerate(RL_METHODS)}
    fig, axes = plt.subplots(3, 2, figsize=(12, 12))
    def rollout_xy(tag: str):
        return lambda r, column: [(x if column == 0 else s, v) for x, s, v in r.rollout_curves.get(tag, [])]

    def val_xy(r: RunResult, column: int):
        return [(p["rollouts"] if column == 0 else p["seconds"], p[metric]) for p in r.val_curve]

    panels = [(0, rollout_xy("reward_mean"), SMOOTHING, f"rollout reward ({SMOOTHING}-rollout mean)"),
              (1, val_xy, 1, f"val {metric} (greedy)"),
              (2, rollout_xy("entropy"), SMOOTHING, f"rollout entropy, nats per token ({SMOOTHING}-rollout mean)")]
    for row_index, curve_of, smooth, label in panels:
        for column, xlabel in enumerate(("rollouts", "seconds of training")):
            ax = axes[row_index, column]
            for method in methods:
                curves = [curve_of(r, column) for r in results if r.method == method]
                if all(curves):
                    xs, mean, std = band(curves, smooth)
                    ax.plot(xs, mean, label=method, color=colours[method])
                    ax.fill_between(xs, mean - std, mean + std, alpha=0.15, color=colours[method])
            ax.set(xlabel=xlabel, ylabel=label)
    axes[0, 0].set_title(f"{task}: against rollouts (band: std over seeds)")
    axes[0, 1].set_title(f"{task}: against wall-clock seconds")
    axes[1, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "curves.png", dpi=110)
    plt.close(fig)

    keys = list(dict.fromkeys((metric, "accuracy")))
    fig, axes = plt.subplots(1, len(keys), figsize=(7 * len(keys), 4), squeeze=False)
    x = range(len(methods))
    for ax, key in zip(axes[0], keys):
        ax.bar([i - 0.2 for i in x], [r[f"final_{key}_mean"] for r in rows], 0.4,
               yerr=[r[f"final_{key}_std"] for r in rows], capsize=3, label="final model",
               color=[colours[m] for m in methods])
        ax.bar([i + 0.2 for i in x], [r[f"best_{key}_mean"] for r in rows], 0.4,
               yerr=[r[f"best_{key}_std"] for r in rows], capsize=3, label="best-by-val checkpoint",
               color=[colours[m] for m in methods], alpha=0.45)
        if base is not None:
            ax.axhline(base[key], color="black", linestyle="--", linewidth=1, label=f"SFT base ({base[key]:.3f})")
        ax.set_xticks(list(x), methods, rotation=30)
        ax.set(title=f"{task}: test {key} (mean and std over seeds)", ylabel=key, ylim=(0, 1))
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "test_accuracy.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    for ax, axis in zip(axes, ("lr", "beta")):
        for method in methods:
            runs = [r for r in sweep if r.method == method]
            chosen_lr = next(row["lr"] for row in rows if row["method"] == method)
            if axis == "lr":       # the lr stage: the runs at the lr-stage beta (all of a method without an anchor)
                stage_beta = None if runs[0].beta is None else lr_beta
                runs = sorted((r for r in runs if r.beta == stage_beta), key=lambda r: r.lr)
            else:                  # the beta stage: the runs at the chosen lr of a method with an anchor
                runs = sorted((r for r in runs if r.beta is not None and r.lr == chosen_lr), key=lambda r: r.beta)
            if len(runs) < 2:
                continue
            xs = [getattr(r, axis) for r in runs]
            ax.plot(xs, [r.val_end(metric) for r in runs], marker="o", label=method, color=colours[method])
            ax.scatter([x for x, r in zip(xs, runs) if r.collapsed(metric)],
                       [r.val_end(metric) for r in runs if r.collapsed(metric)], marker="x", s=80, color="black")
        ax.axhline(statistics.fmean(r.val(metric)[0] for r in sweep), color="black", linestyle="--", linewidth=1,
                   label="base (val)")
        if axis == "lr":
            ax.set_xscale("log")
        else:
            ax.set_xscale("symlog", linthresh=0.01)
        ax.set(xlabel="learning rate" if axis == "lr" else "beta (KL anchor)", ylabel=f"val {metric} at the end (seed 0)",
               title=f"{task}: {axis} stage (x: collapsed)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "sweep.png", dpi=110)
    plt.close(fig)


def stopped_notes(results: list[RunResult]) -> str:
    stopped = [f"- {r.method} seed {r.seed} stopped at step {r.steps}: {r.stopped}" for r in results if r.stopped]
    return "\nRuns stopped early by a guard (their model at that point is evaluated):\n" + "\n".join(stopped) + "\n" if stopped else ""


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    columns = columns or list(rows[0])
    header = "| " + " | ".join(columns) + " |"
    rule = "|" + "---|" * len(columns)
    cell = lambda value: "-" if value is None else str(value)
    return "\n".join([header, rule] + ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows])


def recipe_mu_overrides(experiment: str, overrides: list[str]) -> list[str]:
    """The experiment's recipe mu, with the step-counted settings scaled so that the rollout
    budget and the evaluation points (in rollouts) stay those of the mu = 1 comparison."""
    cfg = load_experiment(experiment, overrides)
    mu = OBJECTIVES[cfg.method.name].Config.num_iterations
    t = cfg.trainer
    return [f"method.num_iterations={mu}", f"trainer.max_steps={t.max_steps * mu}",
            f"trainer.val_every_n_steps={t.val_every_n_steps * mu}",
            f"trainer.checkpoint_every_n_steps={t.checkpoint_every_n_steps * mu}",
            f"trainer.max_rollouts={t.max_rollouts or t.max_steps}"]


def init_worker() -> None:
    """A compare worker: one torch thread, and it exits as soon as the compare process is gone
    (killed or stopped), so no orphaned worker goes on training and writing into runs/."""
    import multiprocessing
    import os
    import threading

    import torch

    torch.set_num_threads(1)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=lambda: (parent.join(), os._exit(1)), daemon=True).start()


def run_all(runs: list[tuple], jobs: int) -> list[RunResult]:
    """run_one(*args) for every args of `runs`, in order; with jobs > 1 in that many worker
    processes of one torch thread each (the threads of parallel runs would otherwise oversubscribe
    the cores). When the base model is missing the first run goes alone: it trains the base, which
    the others then find."""
    if jobs <= 1 or len(runs) <= 1:
        return [run_one(*args) for args in runs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    base = base_model(runs[0][1], runs[0][5])
    first = [run_one(*runs[0])] if base is not None and base[1] is None else []
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=init_worker) as pool:
        return [*first, *pool.map(run_one, *zip(*runs[len(first):]))]


def compare(task: str, seeds: int, methods: list[str] | None = None, out: str = "results",
            overrides: list[str] | None = None, lrs: list[float] | None = None, mu: str = "shared",
            jobs: int = 1, betas: list[float] | None = None, rollout_modes: list[str] | None = None) -> Path:
    """Tune, train (or reuse) and evaluate every method x seed (`jobs` runs at a time); write the
    tables and plots; returns the output dir. With `rollout_modes`, every method x mode x seed at
    the setting tuned with exact rollouts instead (`compare_rollout_modes`)."""
    user_overrides = list(overrides or [])
    lrs, betas = sorted(lrs or SWEEP_LRS), sorted(betas or SWEEP_BETAS)
    command = " ".join(["python -m gdsd_lightning compare", f"--task {task} --seeds {seeds}",
                        *([f"--mu {mu}"] if mu == "recipe" else []), f"--lrs {','.join(f'{lr:g}' for lr in lrs)}",
                        f"--betas {','.join(f'{b:g}' for b in betas)}", *([f"--jobs {jobs}"] if jobs > 1 else []),
                        *([f"--methods {','.join(methods)}"] if methods else []),
                        *([f"--rollout-modes {','.join(rollout_modes)}"] if rollout_modes else []), *user_overrides])
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    if mu not in ("shared", "recipe"):
        raise UserError(f"--mu must be 'shared' (mu = 1 for every method) or 'recipe', got {mu!r}")
    unknown_modes = [m for m in rollout_modes or [] if m not in ROLLOUT_MODES]
    if unknown_modes:
        raise UserError(f"--rollout-modes: unknown mode {unknown_modes[0]!r}; choose from {', '.join(ROLLOUT_MODES)}")
    shared = [SHARED_SCHEDULE, *user_overrides]
    experiments = experiments_for(task, methods)
    overrides = {m: [*shared, *(recipe_mu_overrides(e, shared) if mu == "recipe" else [])] for m, e in experiments.items()}
    metric = headline_metric(task)
    started = time.time()
    sweep, chosen, reasons = tune(experiments, lrs, betas, overrides, metric, jobs)
    if rollout_modes:
        return compare_rollout_modes(task, seeds, experiments, chosen, overrides, rollout_modes, jobs,
                                     Path(out) / f"{task}_rollout_modes", command, started)
    more = run_all([(m, e, chosen[m].lr, chosen[m].beta, s, overrides[m]) for m, e in experiments.items()
                    for s in range(1, seeds)], jobs)
    results = [r for m in experiments for r in [chosen[m], *(r for r in more if r.method == m)]]
    out_dir = Path(out) / (f"{task}_recipe_mu" if mu == "recipe" else task)
    base = base_metrics(next(iter(experiments.values())), shared)
    base_val = statistics.fmean(r.val(metric)[0] for r in results)
    rows = summarise(results, metric, base, base_val)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "sweep.csv", [{
        "method": r.method, "lr": r.lr, "beta": r.beta, "val_start": round(r.val(metric)[0], 4),
        f"val_{metric}_end": round(r.val_end(metric), 4), "val_accuracy_end": round(r.val_end("accuracy"), 4),
        "collapsed": r.collapsed(metric), "chosen": r is chosen[r.method], "run_dir": str(r.run_dir)}
        for r in sweep])
    write_csv(out_dir / "runs.csv", [{
        "method": r.method, "lr": r.lr, "beta": r.beta, "seed": r.seed, "run_dir": str(r.run_dir), "steps": r.steps,
        "rollouts": r.rollouts, "wall_time_s": r.wall_time_s,
        **{f"final_{k}": v for k, v in r.final.items()}, **{f"best_{k}": v for k, v in r.best.items()},
        "best_step": r.best_step, f"val_{metric}_start": r.val(metric)[0], f"val_{metric}_end": round(r.val_end(metric), 4),
        "collapsed": r.collapsed(metric), "stopped": r.stopped or ""} for r in results])
    write_csv(out_dir / "compare.csv", rows)
    plot(results, rows, sweep, metric, base, task, out_dir, lr_stage_beta(betas))
    configs = {m: load_experiment(e, overrides[m]) for m, e in experiments.items()}
    glance = list(dict.fromkeys(["method", "mu", "lr", "beta", f"final_{metric}_mean", f"final_{metric}_std",
                                 "final_accuracy_mean", "final_accuracy_std", f"base_{metric}", "rollouts_to_target",
                                 "steps_to_target", "reached_target", "collapsed", "entropy_end", "wall_time_s"]))
    table = [{**row, "mu": configs[row["method"]].method.num_iterations} for row in rows]
    choice = "\n".join(f"- {m}: {chosen[m].setting} ({reasons[m]})" for m in experiments)
    sweep_md = markdown_table([{"method": r.method, "lr": f"{r.lr:g}", "beta": "-" if r.beta is None else f"{r.beta:g}",
                                f"val {metric} at the end": round(r.val_end(metric), 3),
                                "val accuracy at the end": round(r.val_end("accuracy"), 3), "collapsed": r.collapsed(metric),
                                "chosen": r is chosen[r.method]} for r in sweep])
    regime = "each recipe's mu" if mu == "recipe" else "mu = 1 for every method"
    (out_dir / "compare.md").write_text(
        f"# {task}: method comparison ({regime})\n\n"
        f"{settings_text(configs, seeds, mu, metric, base, base_val)}\n\n"
        f"Reproduce: `{command}` (this one took {time.time() - started:.0f} s including reused runs).\n\n"
        f"{markdown_table(table, glance)}\n\nAll columns: `compare.csv`; per run: `runs.csv`.\n\n"
        f"{rule_text(lrs, betas)}\n\nChosen settings:\n{choice}\n\n"
        f"The sweep (seed 0; val figures; run directories in `sweep.csv`):\n\n{sweep_md}\n\n![sweep](sweep.png)\n\n"
        + NOTES.format(headline=metric, gain=TARGET_GAIN, collapse=COLLAPSE_FRACTION, smooth=SMOOTHING)
        + f"{stopped_notes(results)}\n![curves](curves.png)\n\n![test accuracy](test_accuracy.png)\n")
    print(f"[compare] wrote {out_dir}/compare.csv, compare.md, sweep.csv, runs.csv, curves.png, test_accuracy.png, sweep.png",
          flush=True)
    print(markdown_table(table, glance), flush=True)
    return out_dir


def compare_rollout_modes(task: str, seeds: int, experiments: dict[str, str], chosen: dict[str, RunResult],
                          overrides: dict[str, list[str]], modes: list[str], jobs: int, out_dir: Path, command: str,
                          started: float) -> Path:
    """Every method at its chosen setting (tuned with exact rollouts), each rollout mode, `seeds`
    seeds; evaluation is exact in every mode (`rollout.sampler` changes the rollouts only).
    -> out_dir/compare.csv (one row per method and mode), runs.csv, compare.md, modes.png"""
    metric = headline_metric(task)
    results = run_all([(m, e, chosen[m].lr, chosen[m].beta, s, overrides[m], mode) for m, e in experiments.items()
                       for mode in modes for s in range(seeds)], jobs)
    base = base_metrics(next(iter(experiments.values())), overrides[next(iter(experiments))])
    base_val = statistics.fmean(r.val(metric)[0] for r in results)
    mean_of = lambda values: round(statistics.fmean(values), 4) if values else None
    rows = []
    for method in experiments:
        for mode in modes:
            runs = [r for r in results if r.method == method and r.rollout_mode == mode]
            row = summarise(runs, metric, base, base_val)[0]
            measured = [rec for r in runs for rec in r.rollout_records if "mean_abs_log_ratio" in rec]
            rows.append({"method": method, "rollout_mode": mode, **{k: v for k, v in row.items() if k != "method"},
                         "rollout_seconds_mean": mean_of([r.rollout_seconds for r in runs if r.rollout_seconds is not None]),
                         "seconds_per_unmeasured_rollout": mean_of([r.unmeasured_rollout_seconds for r in runs
                                                                    if r.unmeasured_rollout_seconds is not None]),
                         **{f"mismatch_{key}": mean_of([rec[key] for rec in measured if key in rec])
                            for key in ("mean_abs_log_ratio", "max_abs_log_ratio", "reranked_fraction", "weight_mean")}})
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "compare.csv", rows)
    write_csv(out_dir / "runs.csv", [{
        "method": r.method, "rollout_mode": r.rollout_mode, "lr": r.lr, "beta": r.beta, "seed": r.seed,
        "run_dir": str(r.run_dir), f"final_{metric}": r.final[metric], "rollout_seconds": r.rollout_seconds,
        "wall_time_s": r.wall_time_s, "collapsed": r.collapsed(metric)} for r in results])
    plot_rollout_modes(results, rows, metric, base, task, out_dir)
    glance = ["method", "rollout_mode", "lr", "beta", "seeds", f"final_{metric}_mean", f"final_{metric}_std",
              "base_solve_rate", "rollout_seconds_mean", "seconds_per_unmeasured_rollout", "seconds_to_target",
              "reached_target", "collapsed", "mismatch_mean_abs_log_ratio", "mismatch_reranked_fraction",
              "mismatch_weight_mean", "wall_time_s"]
    modes_text = "\n".join(f"- `{mode}`: {' '.join(ROLLOUT_MODES[mode]) or 'the exact sampler'}" for mode in modes)
    (out_dir / "compare.md").write_text(
        f"# {task}: exact and fast rollouts\n\nEach method at the setting the tuning rule chose with exact rollouts "
        f"(`{task}/compare.md`), {seeds} seed(s) per rollout mode; validation and test decode with the exact sampler in "
        f"every mode. Modes:\n{modes_text}\n\nReproduce: `{command}` (this one took {time.time() - started:.0f} s "
        f"including reused runs).\n\n{markdown_table(rows, glance)}\n\nAll columns: `compare.csv`; per run: `runs.csv`. "
        "`rollout_seconds_mean`: sampling seconds per run (mismatch measurement included; `-` for runs from before they "
        "were recorded); `seconds_per_unmeasured_rollout`: mean seconds of a rollout drawn without the measurement; "
        "`mismatch_*`: means over the measured rollouts (docs/sampling.md).\n\n![modes](modes.png)\n")
    print(f"[compare] wrote {out_dir}/compare.csv, compare.md, runs.csv, modes.png", flush=True)
    print(markdown_table(rows, glance), flush=True)
    return out_dir


def plot_rollout_modes(results: list[RunResult], rows: list[dict], metric: str, base: dict | None, task: str,
                       out_dir: Path) -> None:
    """Test headline and sampling seconds per (method, mode), and the mismatch over training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{row['method']}\n{row['rollout_mode']}" for row in rows]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    colours = [f"C{i}" for i in range(len(rows))]
    axes[0].bar(labels, [row[f"final_{metric}_mean"] for row in rows], yerr=[row[f"final_{metric}_std"] for row in rows],
                capsize=3, color=colours)
    if base is not None:
        axes[0].axhline(base[metric], color="black", linestyle="--", linewidth=1, label=f"SFT base ({base[metric]:.3f})")
        axes[0].legend(fontsize=8)
    axes[0].set(title=f"{task}: test {metric} (mean, std over seeds)", ylabel=metric)
    axes[1].bar(labels, [row["rollout_seconds_mean"] or 0.0 for row in rows], color=colours)
    axes[1].set(title="sampling seconds per run", ylabel="seconds")
    for i, row in enumerate(rows):
        curves = [[(rec["rollout"], rec["mean_abs_log_ratio"]) for rec in r.rollout_records if "mean_abs_log_ratio" in rec]
                  for r in results if (r.method, r.rollout_mode) == (row["method"], row["rollout_mode"])]
        if curves and all(curves):
            xs, mean, std = band(curves, smooth=5)
            axes[2].plot(xs, mean, label=labels[i].replace("\n", " "), color=colours[i])
            axes[2].fill_between(xs, mean - std, mean + std, alpha=0.15, color=colours[i])
    axes[2].set(title="mismatch over training (5-point mean; band: std over seeds)", xlabel="rollouts",
                ylabel="mean |log p_exact - log p_sampler|")
    if axes[2].lines:
        axes[2].legend(fontsize=8)
    for ax in axes[:2]:
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "modes.png", dpi=110)
    plt.close(fig)


def rule_text(lrs: list[float], betas: list[float]) -> str:
    """The tuning rule and its grid, as compare.md states them."""
    grid = lambda values: ", ".join(f"{v:g}" for v in values)
    return (f"Tuning rule (the same for every method): seed 0 at every lr of {{{grid(lrs)}}}, a method with a KL anchor "
            f"to the reference (GDSD, GDSD-TLC, ESPO, diffu-GRPO: `method.beta`) at beta {lr_stage_beta(betas):g}; "
            f"then such a method at the chosen lr and every beta of {{{grid(betas)}}}. Each stage keeps the run with the "
            f"best val headline at the end (mean of the last two evaluations) among those that did not collapse (ties: "
            f"the smaller lr, then beta); seeds 1.. run at the chosen setting. Nothing else is tuned for any method.")


def settings_text(configs: dict[str, DictConfig], seeds: int, mu: str, metric: str, base: dict | None,
                  base_val: float) -> str:
    """The regime, the rollout budget, the block structure and the base, as compare.md states them;
    the methods whose rollout settings differ from the others' are named."""
    setting = {m: (c.rollout.prompts_per_step, c.rollout.num_generations, c.rollout.passk, c.rollout.temperature)
               for m, c in configs.items()}
    common = statistics.mode(setting.values())
    cfg = next(configs[m] for m in configs if setting[m] == common)
    differ = [f"{m}: {p} prompts x {g} x passk {k} at T = {t}" for m, (p, g, k, t) in setting.items() if (p, g, k, t) != common]
    mus = ", ".join(f"{m} {c.method.num_iterations}" for m, c in configs.items())
    s = cfg.sampler
    regime = f"each recipe's mu ({mus})" if mu == "recipe" else "mu = 1 for every method"
    return (f"Regime: {regime}, "
            f"on the same rollout budget. {seeds} seed(s) per method; {cfg.trainer.max_rollouts or cfg.trainer.max_steps} "
            f"rollouts of {cfg.rollout.prompts_per_step} prompts x {cfg.rollout.num_generations} completions at T = "
            f"{cfg.rollout.temperature}{' (' + '; '.join(differ) + ')' if differ else ''} ({cfg.optim.scheduler} lr after "
            f"{cfg.optim.warmup_steps} warm-up steps). Blocks: {s.gen_length} answer tokens decoded in "
            f"{s.gen_length // s.block_length} blocks of {s.block_length}, {s.steps} steps ({s.gen_length // s.steps} tokens per "
            f"step). Test split greedy; headline metric `{metric}`; SFT base test "
            f"{', '.join(f'{k} {v}' for k, v in (base or {}).items())}; target for `rollouts_to_target`: val {metric} "
            f"{base_val:.3f} + {TARGET_GAIN}.")
