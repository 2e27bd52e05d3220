"""Short end-to-end runs through the CLI on a very small model (seconds each)."""

import json

import pytest
import torch

from gdsd_lightning.cli import main
from gdsd_lightning.commands.train import train
from gdsd_lightning.experiment import load_experiment
from gdsd_lightning.models import DiffusionLM
from gdsd_lightning.models.build import build_policy
from tests.conftest import SMALL, rl_overrides, weights

def test_rl_training_changes_the_weights_and_writes_the_run(tmp_path, varied_reward):
    cfg = load_experiment("gdsd_tiny_sudoku", rl_overrides(tmp_path, 4, run_name="a"))
    before = weights(build_policy(cfg))
    run_dir = train(cfg)
    after = weights(DiffusionLM.load(run_dir / "final"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["experiment"] == "gdsd_tiny_sudoku" and summary["steps"] == 4
    assert [s for s, _ in summary["val_accuracy"]] == [0, 2, 4]
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.ckpt").exists()
    assert (run_dir.parent / "latest").resolve() == run_dir.resolve()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_the_rollout_budget_ends_a_run_before_max_steps(tmp_path, varied_reward):
    cfg = load_experiment("gdsd_tiny_sudoku", rl_overrides(tmp_path, 8, run_name="budget", **{"trainer.max_rollouts": 2}))
    summary = json.loads((train(cfg) / "summary.json").read_text())
    assert (summary["rollouts"], summary["steps"]) == (2, 4)           # mu = 2 optimiser steps per rollout
    assert summary["val_accuracy"][-1][0] == 4 and "stopped" not in summary


def test_resume_continues_exactly_where_the_run_stopped(tmp_path, varied_reward):
    straight = train(load_experiment("gdsd_tiny_sudoku", rl_overrides(tmp_path, 4, run_name="straight")))
    first = train(load_experiment("gdsd_tiny_sudoku", rl_overrides(tmp_path, 2, run_name="interrupted")))
    ckpt = first / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["global_step"] == 2
    resumed = train(load_experiment("gdsd_tiny_sudoku", rl_overrides(tmp_path, 4, run_name="interrupted", resume=ckpt)))
    assert resumed == first
    a, b = weights(DiffusionLM.load(straight / "final")), weights(DiffusionLM.load(resumed / "final"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), "resumed run diverged from the straight run"
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["steps"] == 4 and [s for s, _ in summary["val_accuracy"]] == [0, 2, 4]


def test_sft_then_eval_on_a_data_file(tmp_path, capsys):
    runs = tmp_path / "runs"
    main(["train", "tiny_sudoku_sft", *SMALL, f"runs_dir={runs}", "trainer.max_steps=3", "batch_size=8",
          "trainer.val_every_n_steps=3", "trainer.checkpoint_every_n_steps=3"])
    data = tmp_path / "puzzles.csv"
    data.write_text("Puzzle,Solution\n3102200002100320,3142243142131324\n0140432014020000,2143432114323214\n")
    out = tmp_path / "eval"
    main(["eval", "tiny_sudoku_sft", "--data", str(data), "--out", str(out), f"runs_dir={runs}"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 2 and 0.0 <= summary["accuracy"] <= 1.0 and "solve_rate" in summary["results"]["sudoku"]["16"]
    assert summary["protocol"]["name"] == "experiment" and summary["protocol"]["lengths"] == [16]
    header, *rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert header["protocol"] == summary["protocol"]
    assert len(rows) == 2 and rows[0]["example"]["Puzzle"] == "3102200002100320"


@pytest.mark.parametrize("argv, phrase", [
    (["eval", "tiny_sudoku_sft", "--ckpt", "/no/such/ckpt"], "checkpoint /no/such/ckpt does not exist"),
    (["train", "no_such_experiment"], "unknown experiment 'no_such_experiment'"),
    (["eval", "tiny_sudoku_sft", "runs_dir=/no/runs/here"], "has no trained model yet"),
])
def test_bad_input_gets_one_sentence_and_exit_code_2(argv, phrase, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert phrase in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_reference_sync_copies_the_policy_into_the_reference(tmp_path, varied_reward):
    from gdsd_lightning.callbacks import ReferenceSync
    from gdsd_lightning.module import DiffusionRLModule
    from gdsd_lightning.tasks import task_from_config

    cfg = load_experiment("gdsd_tiny_sudoku", rl_overrides(tmp_path, 2, **{"method.beta": 0.1}))
    module = DiffusionRLModule(cfg, build_policy(cfg), task_from_config(cfg.task))
    with torch.no_grad():
        next(module.policy.parameters()).add_(1.0)
    sync = ReferenceSync(every_n_steps=2)
    fake_trainer = type("T", (), {"global_step": 1})()
    sync.on_train_batch_end(fake_trainer, module, None, None, 0)
    assert not torch.equal(next(module.policy.parameters()), next(module.reference.parameters()))
    fake_trainer.global_step = 2
    sync.on_train_batch_end(fake_trainer, module, None, None, 0)
    assert all(torch.equal(a, b) for a, b in zip(module.policy.parameters(), module.reference.parameters()))


@pytest.mark.parametrize("method", ["gdsd_tlc", "diffu_grpo", "wd1", "spg", "espo"])
def test_every_baseline_trains_with_old_and_reference_roles(tmp_path, varied_reward, method):
    """mu = 2 exercises the recorded old-policy scores; the ratio methods also hold a reference."""
    extra = {"method.beta": 0.1} if method in ("diffu_grpo", "espo") else {}
    cfg = load_experiment(f"{method}_tiny_sudoku", rl_overrides(tmp_path, 4, **extra))
    before = weights(build_policy(cfg))
    run_dir = train(cfg)
    after = weights(DiffusionLM.load(run_dir / "final"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 4 and all(a == a for _, a in summary["val_accuracy"])


# the objectives whose formula in methods.md has a beta-weighted KL to the reference
KL_ANCHORED = {"gdsd", "gdsd_tlc", "diffu_grpo", "espo"}


@pytest.mark.parametrize("method", ["gdsd", "gdsd_tlc", "diffu_grpo", "wd1", "spg", "espo", "dmpo"])
def test_kl_anchor_says_whether_the_loss_depends_on_beta(tmp_path, varied_reward, method):
    """`make compare` tunes beta for exactly the methods whose class declares a KL anchor; for the
    others method.beta builds no reference and changes nothing. (d-OPSD's beta is its divergence's
    forward/reverse mix, not an anchor: it is tuned by lr only.)"""
    from omegaconf import open_dict, read_write

    from gdsd_lightning.module import DiffusionRLModule
    from gdsd_lightning.objectives import OBJECTIVES
    from gdsd_lightning.tasks import task_from_config

    assert OBJECTIVES[method].kl_anchor == (method in KL_ANCHORED)
    cfg = load_experiment(f"{method}_tiny_sudoku", rl_overrides(tmp_path, 1, **{"method.beta": 0.5,
                                                                                "method.num_iterations": 1}))
    module = DiffusionRLModule(cfg, build_policy(cfg), task_from_config(cfg.task))
    batch = module.rollout(module.task.generate(2, seed=0))
    with torch.no_grad():                     # the policy moves away from the reference
        for p in module.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = module.objective.prepare(module.policy, module.reference, batch)
    anchored = module.objective.loss(module.policy, batch, 0)[0].item()
    with open_dict(module.objective.cfg), read_write(module.objective.cfg):
        module.objective.cfg.beta = 0.0
    unanchored = module.objective.loss(module.policy, batch, 0)[0].item()
    assert (anchored != pytest.approx(unanchored, rel=1e-6, abs=1e-9)) == (method in KL_ANCHORED)


def test_compare_tunes_lr_then_beta_writes_the_tables_and_plots_and_reuses_finished_runs(tmp_path, varied_reward, capfd):
    import csv

    args = ["compare", "--task", "sudoku", "--seeds", "2", "--methods", "gdsd,wd1", "--lrs", "1e-3,1e-2",
            "--betas", "0,0.5", "--jobs", "2", "--out", str(tmp_path / "results"), *rl_overrides(tmp_path, 2)]
    main(args)
    out = tmp_path / "results" / "sudoku"
    sweep = list(csv.DictReader(open(out / "sweep.csv")))
    # lr stage at the median_low beta (0) for GDSD, which has a KL anchor, and without one for wd1;
    # then GDSD's beta stage at its chosen lr
    assert [(r["method"], float(r["lr"]), r["beta"]) for r in sweep[:4]] == [
        ("gdsd", 1e-3, "0.0"), ("gdsd", 1e-2, "0.0"), ("wd1", 1e-3, ""), ("wd1", 1e-2, "")]
    assert [(r["method"], r["beta"]) for r in sweep[4:]] == [("gdsd", "0.5")]
    standing = [r for r in sweep[:2] if r["collapsed"] == "False"] or sweep[:2]
    stage_one = max(standing, key=lambda r: (round(float(r["val_solve_rate_end"]), 4), -float(r["lr"])))
    assert float(sweep[4]["lr"]) == float(stage_one["lr"])
    assert [sum(r["chosen"] == "True" for r in sweep if r["method"] == m) for m in ("gdsd", "wd1")] == [1, 1]
    rows = list(csv.DictReader(open(out / "compare.csv")))
    assert [r["method"] for r in rows] == ["gdsd", "wd1"]
    chosen = {r["method"]: (r["lr"], r["beta"]) for r in sweep if r["chosen"] == "True"}
    assert all((float(r["lr"]), r["beta"]) == (float(chosen[r["method"]][0]), chosen[r["method"]][1]) for r in rows)
    for column in ("final_accuracy_mean", "final_accuracy_std", "final_solve_rate_mean", "final_solve_rate_std",
                   "best_accuracy_mean", "reached_target", "collapsed", "entropy_end", "reward_auc", "steps", "wall_time_s"):
        assert all(r[column] not in ("", "nan") for r in rows), column
    assert all("base_solve_rate" in r for r in rows)
    runs = list(csv.DictReader(open(out / "runs.csv")))
    assert [(r["method"], r["seed"]) for r in runs] == [("gdsd", "0"), ("gdsd", "1"), ("wd1", "0"), ("wd1", "1")]
    for plot in ("curves.png", "test_accuracy.png", "sweep.png"):
        assert (out / plot).stat().st_size > 0
    report = (out / "compare.md").read_text()
    assert "| gdsd |" in report and "Tuning rule" in report and "{0, 0.5}" in report
    assert "4 blocks of 4" in report and "mu = 1 for every method" in report
    run_dirs = sorted((tmp_path / "runs").glob("*/lr*"))
    assert len(run_dirs) == 7                # gdsd: 2 lrs + 1 beta + seed 1; wd1: 2 lrs + seed 1
    capfd.readouterr()
    main(args)
    assert sorted((tmp_path / "runs").glob("*/lr*")) == run_dirs
    assert capfd.readouterr().out.count("[compare] reusing") == 7

    # the second regime: each recipe's mu, tuned by the same rule at that mu, on the same rollout budget
    main(["compare", "--task", "sudoku", "--seeds", "1", "--methods", "gdsd,dopsd", "--mu", "recipe", "--lrs", "1e-3",
          "--betas", "0", "--out", str(tmp_path / "results"), *rl_overrides(tmp_path, 2)])
    recipe = list(csv.DictReader(open(tmp_path / "results" / "sudoku_recipe_mu" / "runs.csv")))
    assert [(r["method"], float(r["lr"])) for r in recipe] == [("gdsd", 1e-3), ("dopsd", 1e-3)]
    assert [(int(r["steps"]), int(r["rollouts"])) for r in recipe] == [(16, 2), (8, 2)]   # mu = 8 and 4 per rollout
    assert "each recipe's mu (gdsd 8, dopsd 4)" in (tmp_path / "results" / "sudoku_recipe_mu" / "compare.md").read_text()

    # rollout modes: the setting tuned with exact rollouts (the sweep's run, reused), then fast rollouts
    # with the correction; the fast run measures its mismatch, the exact one has none
    main(["compare", "--task", "sudoku", "--seeds", "1", "--methods", "gdsd", "--lrs", "1e-3", "--betas", "0",
          "--rollout-modes", "exact,fast+tis", "--out", str(tmp_path / "results"), *rl_overrides(tmp_path, 2)])
    modes = list(csv.DictReader(open(tmp_path / "results" / "sudoku_rollout_modes" / "compare.csv")))
    assert [(r["method"], r["rollout_mode"]) for r in modes] == [("gdsd", "exact"), ("gdsd", "fast+tis")]
    assert modes[0]["mismatch_mean_abs_log_ratio"] == "" and float(modes[1]["mismatch_mean_abs_log_ratio"]) > 0
    assert all(float(r["rollout_seconds_mean"]) > 0 and r["final_solve_rate_std"] != "" for r in modes)
    assert modes[1]["seconds_per_unmeasured_rollout"] == ""          # tis measures every rollout
    assert len(list((tmp_path / "runs" / "gdsd_tiny_sudoku").glob("*_fast_tis_seed0"))) == 1
    assert (tmp_path / "results" / "sudoku_rollout_modes" / "modes.png").stat().st_size > 0
    capfd.readouterr()
    with pytest.raises(SystemExit):
        main(["compare", "--methods", "gdsd", "--rollout-modes", "turbo", *rl_overrides(tmp_path, 2)])
    assert "--rollout-modes: unknown mode 'turbo'; choose from exact, threshold, cache, fast, fast+tis, fast+mis" in capfd.readouterr().err


def test_the_warm_up_starts_from_a_zero_learning_rate_as_the_releases_schedules_do(tmp_path):
    from gdsd_lightning.module import DiffusionRLModule
    from gdsd_lightning.tasks import get_task

    # transformers' constant_with_warmup: factor step / warmup while step < warmup, then 1
    cfg = load_experiment("gdsd_tiny_sudoku", rl_overrides(tmp_path, 10, **{"optim.warmup_steps": 4,
                                                                             "optim.scheduler": "constant",
                                                                             "optim.lr": 1e-3}))
    scheduler = DiffusionRLModule(cfg, build_policy(cfg), get_task("sudoku")).configure_optimizers()["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(6):
        rates.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([1e-3 * f for f in (0, .25, .5, .75, 1, 1)])
