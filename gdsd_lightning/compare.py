"""`python -m gdsd_lightning compare`: every RL method x seeds on one tiny task, one table.

    for each method with an experiment <method>_tiny_<task>, for each seed:
        load it with the shared optimiser schedule (_base/rl_tiny_schedule.yaml) merged over it
        reuse a finished run with the same resolved config, or train one
        evaluate its final model and its best-by-val checkpoint on the test split (greedy)
    -> <out>/<task>/runs.csv      one row per (method, seed)
       <out>/<task>/compare.csv   one row per method: test accuracy mean/std, reward AUC, time
       <out>/<task>/compare.md    the same table, the settings and the plots
       <out>/<task>/curves.png, test_accuracy.png

reward_auc is the area under the rollout-reward curve divided by its length (the mean training
reward over all rollouts): it rewards learning early as well as learning much.
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from gdsd_lightning.config import list_experiments, load_experiment, load_run_config
from gdsd_lightning.errors import TrainingStopped, UserError
from gdsd_lightning.runs import FINAL_MODEL, latest_final_model, runs_root

METHOD_ORDER = ["gdsd", "gdsd_tlc", "diffu_grpo", "wd1", "spg", "espo", "dmpo", "dopsd"]
NOT_COMPARED = ("run_name", "resume")      # keys that name a run rather than define it
# Merged over every compared experiment: the same optimiser, schedule and steps for all methods, whatever an
# experiment sets for its own runs (gdsd_tiny_sudoku, `make train`'s demo, trains longer at a larger lr).
SHARED_SCHEDULE = "extends=_base/rl_tiny_schedule.yaml"
SMOOTHING = 25                             # rollouts in the moving average of the reward plot
NOTES = """Columns: test accuracy (greedy) of the final model and of the best-by-val checkpoint, mean and
std over seeds; `reward_auc` = mean rollout reward over training; `best_step_mean` = optimiser step
of the best val accuracy (0: the base itself was best); `wall_time_s` = training time per run.
d-OPSD's rollout reward is that of the kept attempt (best of `passk`), so its reward curve and
`reward_auc` are not comparable with the others'; it gets the same 300 rollout batches, but those
its gate skips give no optimiser step, so it ends with fewer `steps`.
`steps` = optimiser steps reached (mean over seeds); `stopped_early` = seeds a guard stopped before
max_steps (listed below the table).
"""


@dataclass
class RunResult:
    method: str
    seed: int
    run_dir: Path
    steps: int
    wall_time_s: float
    final_accuracy: float
    best_accuracy: float
    reward_auc: float
    best_step: int                         # optimiser step of the best val accuracy
    val_curve: list[tuple[int, float]]
    reward_curve: list[tuple[int, float]]
    stopped: str | None = None             # why a guard ended the run before max_steps


def experiments_for(task: str, methods: list[str] | None) -> dict[str, str]:
    """method -> experiment name, for every method that has a <method>_tiny_<task> experiment."""
    known = set(list_experiments())
    available = {m: f"{m}_tiny_{task}" for m in METHOD_ORDER if f"{m}_tiny_{task}" in known}
    if not available:
        raise UserError(f"no <method>_tiny_{task} experiments in experiments/; is {task!r} a tiny task?")
    if methods:
        missing = [m for m in methods if m not in available]
        if missing:
            raise UserError(f"no tiny {task} experiment for {', '.join(missing)}; available: {', '.join(available)}")
        available = {m: available[m] for m in methods}
    return available


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


def test_accuracy(cfg: DictConfig, ckpt: Path, out_dir: Path) -> float:
    """Greedy test accuracy of `ckpt`, read back from out_dir/summary.json when already computed."""
    from gdsd_lightning.evaluate import evaluate

    summary = out_dir / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("checkpoint") == str(ckpt):
        return json.loads(summary.read_text())["accuracy"]
    return evaluate(cfg, str(ckpt), None, str(out_dir))["accuracy"]


def reward_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, mean rollout reward) pairs from the run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    if "rollout/reward_mean" not in events.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in events.Scalars("rollout/reward_mean")]


def run_one(method: str, experiment: str, seed: int, overrides: list[str]) -> RunResult:
    """Train or reuse one run and test it. "Best" is the best-by-val model: the base itself when
    no evaluation during training beat step 0, else checkpoints/best.ckpt."""
    from gdsd_lightning.train import train_with_base

    cfg = load_experiment(experiment, [*overrides, f"seed={seed}"])
    run_dir = finished_run(cfg)
    if run_dir is None:
        print(f"[compare] training {experiment} seed {seed}", flush=True)
        try:
            run_dir = train_with_base(experiment, [*overrides, f"seed={seed}", f"run_name=seed{seed}"])
        except TrainingStopped as stopped:
            print(f"[compare] {experiment} seed {seed} stopped early: {stopped}", flush=True)
            run_dir = finished_run(cfg)
    else:
        print(f"[compare] reusing {run_dir}", flush=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    rewards = reward_curve(run_dir)
    best_ckpt = run_dir / "checkpoints" / "best.ckpt"
    final_acc = test_accuracy(cfg, run_dir / FINAL_MODEL, run_dir / "test" / "final")
    base = base_accuracy(experiment, overrides) if summary["best_step"] == 0 else None
    if base is not None:
        best_acc = base
    else:
        best_acc = test_accuracy(cfg, best_ckpt, run_dir / "test" / "best") if best_ckpt.is_file() else final_acc
    return RunResult(method, seed, run_dir, summary["steps"], summary["wall_time_s"], final_acc, best_acc,
                     statistics.fmean(r for _, r in rewards) if rewards else float("nan"), summary["best_step"],
                     [tuple(p) for p in summary["val_accuracy"]], rewards, summary.get("stopped"))


def base_accuracy(experiment: str, overrides: list[str]) -> float | None:
    """Test accuracy of the SFT base every method starts from (None when there is no base)."""
    cfg = load_experiment(experiment, overrides)
    base = cfg.model.init_from
    if base is None:
        return None
    base_cfg = load_experiment(base, [o for o in overrides if o.split("=")[0] in ("runs_dir", "task.data_dir")])
    final = latest_final_model(base_cfg.runs_dir, base)
    return test_accuracy(base_cfg, final, final.parent / "test" / "final") if final else None


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(results: list[RunResult]) -> list[dict]:
    rows = []
    for method in dict.fromkeys(r.method for r in results):
        runs = [r for r in results if r.method == method]
        final_mean, final_std = mean_std([r.final_accuracy for r in runs])
        best_mean, best_std = mean_std([r.best_accuracy for r in runs])
        rows.append({
            "method": method, "seeds": len(runs),
            "final_accuracy_mean": round(final_mean, 4), "final_accuracy_std": round(final_std, 4),
            "best_accuracy_mean": round(best_mean, 4), "best_accuracy_std": round(best_std, 4),
            "reward_auc": round(statistics.fmean(r.reward_auc for r in runs), 4),
            "best_step_mean": round(statistics.fmean(r.best_step for r in runs), 1),
            "steps": round(statistics.fmean(r.steps for r in runs)),
            "stopped_early": sum(r.stopped is not None for r in runs),
            "wall_time_s": round(statistics.fmean(r.wall_time_s for r in runs), 1),
        })
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def band(curves: list[list[tuple[int, float]]], smooth: int = 1):
    """Steps, mean and std over seeds of (step, value) curves, each interpolated onto the union of
    their steps within the range they share (moving average of `smooth` points)."""
    import numpy as np

    low, high = max(c[0][0] for c in curves), min(c[-1][0] for c in curves)
    steps = sorted({s for c in curves for s, _ in c if low <= s <= high})
    values = np.array([np.interp(steps, [s for s, _ in c], [v for _, v in c]) for c in curves])
    if smooth > 1 and values.shape[1] >= smooth:
        kernel = np.ones(smooth) / smooth
        values = np.array([np.convolve(v, kernel, mode="valid") for v in values])
        steps = steps[smooth - 1:]
    return np.array(steps), values.mean(0), values.std(0)


def plot(results: list[RunResult], rows: list[dict], base: float | None, task: str, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [row["method"] for row in rows]
    fig, (ax_reward, ax_val) = plt.subplots(1, 2, figsize=(12, 4.5))
    for method in methods:
        runs = [r for r in results if r.method == method]
        for ax, curves, smooth in ((ax_reward, [r.reward_curve for r in runs], SMOOTHING),
                                   (ax_val, [r.val_curve for r in runs], 1)):
            if all(curves):
                steps, mean, std = band(curves, smooth)
                (line,) = ax.plot(steps, mean, label=method)
                ax.fill_between(steps, mean - std, mean + std, alpha=0.2, color=line.get_color())
    ax_reward.set(title=f"{task}: rollout reward ({SMOOTHING}-rollout mean; band = std over seeds)",
                  xlabel="rollout", ylabel="mean reward")
    ax_val.set(title=f"{task}: val accuracy (greedy)", xlabel="optimiser step", ylabel="accuracy")
    ax_val.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "curves.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    x = range(len(methods))
    ax.bar([i - 0.2 for i in x], [r["final_accuracy_mean"] for r in rows], 0.4,
           yerr=[r["final_accuracy_std"] for r in rows], capsize=3, label="final model")
    ax.bar([i + 0.2 for i in x], [r["best_accuracy_mean"] for r in rows], 0.4,
           yerr=[r["best_accuracy_std"] for r in rows], capsize=3, label="best-by-val checkpoint")
    if base is not None:
        ax.axhline(base, color="black", linestyle="--", linewidth=1, label=f"SFT base ({base:.3f})")
    ax.set_xticks(list(x), methods)
    ax.set(title=f"{task}: test accuracy (mean and std over seeds)", ylabel="accuracy")
    lows = [r["final_accuracy_mean"] - r["final_accuracy_std"] for r in rows] + ([base] if base is not None else [])
    ax.set_ylim(max(0.0, min(lows) - 0.05), None)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out_dir / "test_accuracy.png", dpi=120)
    plt.close(fig)


def stopped_notes(results: list[RunResult]) -> str:
    stopped = [f"- {r.method} seed {r.seed} stopped at step {r.steps}: {r.stopped}" for r in results if r.stopped]
    return "\nRuns stopped early by a guard (their model at that point is evaluated):\n" + "\n".join(stopped) + "\n" if stopped else ""


def markdown_table(rows: list[dict]) -> str:
    header = "| " + " | ".join(rows[0]) + " |"
    rule = "|" + "---|" * len(rows[0])
    return "\n".join([header, rule] + ["| " + " | ".join(str(v) for v in row.values()) + " |" for row in rows])


def compare(task: str, seeds: int, methods: list[str] | None = None, out: str = "results",
            overrides: list[str] | None = None) -> Path:
    """Train (or reuse) and evaluate every method x seed; write the table and plots; returns the output dir."""
    user_overrides = list(overrides or [])
    command = " ".join(["python -m gdsd_lightning compare", f"--task {task} --seeds {seeds}", *user_overrides])
    overrides = [SHARED_SCHEDULE, *user_overrides]
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    experiments = experiments_for(task, methods)
    started = time.time()
    results = [run_one(m, e, s, overrides) for m, e in experiments.items() for s in range(seeds)]
    base = base_accuracy(next(iter(experiments.values())), overrides)
    rows = summarise(results)
    out_dir = Path(out) / task
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "runs.csv", [{
        "method": r.method, "seed": r.seed, "run_dir": str(r.run_dir), "steps": r.steps,
        "wall_time_s": r.wall_time_s, "final_accuracy": r.final_accuracy, "best_accuracy": r.best_accuracy,
        "reward_auc": round(r.reward_auc, 4), "best_step": r.best_step,
        "val_accuracy_start": r.val_curve[0][1] if r.val_curve else None, "stopped": r.stopped or ""}
        for r in results])
    write_csv(out_dir / "compare.csv", rows)
    plot(results, rows, base, task, out_dir)
    cfg = load_experiment(next(iter(experiments.values())), overrides)
    settings = (f"{seeds} seed(s) per method; {cfg.trainer.max_steps} optimiser steps of "
                f"{cfg.rollout.prompts_per_step} prompts x {cfg.rollout.num_generations} completions; "
                f"test split greedy; SFT base test accuracy {base if base is not None else 'n/a'}")
    (out_dir / "compare.md").write_text(
        f"# {task}: method comparison\n\n{settings}.\n\nReproduce: `{command}` "
        f"(this one took {time.time() - started:.0f} s including reused runs).\n\n{markdown_table(rows)}\n\n"
        f"{NOTES}{stopped_notes(results)}\n![curves](curves.png)\n\n![test accuracy](test_accuracy.png)\n")
    print(f"[compare] wrote {out_dir}/compare.csv, compare.md, curves.png, test_accuracy.png", flush=True)
    print(markdown_table(rows), flush=True)
    return out_dir
