"""Fast rollouts measured against the exact sampler (issue #33): the per-step mismatch by hand,
the sampler's measurement in exact and cached mode, and the importance weights."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gdsd_lightning.experiment import load_experiment
from gdsd_lightning.diffusion.masking import generator_for
from gdsd_lightning.diffusion.sampler import block_sample, step_mismatch
from gdsd_lightning.errors import UserError
from gdsd_lightning.module import rollout_sampler
from gdsd_lightning.objectives.base import importance_weights
from gdsd_lightning.objectives.diffu_grpo import diffu_grpo_loss
from gdsd_lightning.objectives.espo import espo_loss
from gdsd_lightning.objectives.gdsd import gdsd_loss
from gdsd_lightning.objectives.spg import spg_loss
from gdsd_lightning.commands.train import train
from tests.conftest import make_tiny, rl_overrides

PROMPTS = ["12 34 ", "4 3 2 1 "]


def test_step_mismatch_by_hand():
    """Two slots, vocabulary 2, greedy: slot 0 drew token 0 from used logits (0, 0) (p = 1/2) and the
    exact logits (ln 3, 0) give it 3/4; slot 1 drew token 1 (used (0, ln 3): p = 3/4; exact (0, 0):
    1/2). One commit is scheduled; the sampler committed both (a threshold). The exact sampler
    ranks slot 0 first (confidence 3/4 against 1/2), so slot 1 is reranked; and with the proposal
    of slot 1 flipped in the exact logits it would also differ."""
    used = torch.tensor([[[0.0, 0.0], [0.0, math.log(3)]]])
    exact = torch.tensor([[[math.log(3), 0.0], [0.0, 0.0]]])
    proposal = torch.tensor([[0, 1]])
    commit = torch.tensor([[True, True]])
    confidence = torch.tensor([[0.5, 0.75]])
    ratio, reranked = step_mismatch(used, exact, proposal, commit, confidence, torch.tensor([1]), 0.0, None,
                                    torch.float64, "low_confidence", "float64", torch.float32)
    torch.testing.assert_close(ratio, torch.tensor([[math.log(0.75 / 0.5), math.log(0.5 / 0.75)]]))
    assert reranked.tolist() == [[False, True]]
    # tau = 2 tempers both distributions: used slot 0 stays 1/2, exact becomes sqrt3 / (sqrt3 + 1)
    ratio, _ = step_mismatch(used, exact, proposal, commit, confidence, torch.tensor([1]), 2.0,
                             torch.full((1, 2, 2), 0.5, dtype=torch.float64), torch.float64, "low_confidence",
                             "float64", torch.float32)
    torch.testing.assert_close(ratio[0, 0], torch.tensor(math.log(math.sqrt(3) / (math.sqrt(3) + 1) / 0.5)))
    # nothing committed: no mismatch counted
    ratio, reranked = step_mismatch(used, exact, proposal, torch.zeros_like(commit), confidence, torch.tensor([1]),
                                    0.0, None, torch.float64, "low_confidence", "float64", torch.float32)
    assert not ratio.any() and not reranked.any()


def sampled(model, measure_mismatch=True, **options):
    """16 tokens in 4 blocks of 4 steps at T = 1: three cached steps per block with the cache."""
    ids, mask = model.encode_prompts(PROMPTS)
    return block_sample(model, ids, mask, 16, 4, 16, temperature=1.0, generator=generator_for(3),
                        measure_mismatch=measure_mismatch, **options)


def test_exact_mode_has_no_mismatch_and_the_threshold_only_reranks():
    model = make_tiny(seed=1)
    exact = sampled(model)
    assert exact.log_ratio.shape == (2, 16) and not exact.log_ratio.any() and not exact.reranked.any()
    fast = sampled(model, threshold=1e-3)
    assert not fast.log_ratio.any()            # every forward is exact: only the commit rule differs
    assert fast.reranked.any() and fast.forwards < exact.forwards


def test_the_cache_changes_the_probabilities_and_a_refresh_every_step_does_not():
    model = make_tiny(seed=1)
    cached = sampled(model, kv_cache=True)
    assert torch.equal(cached.completions, sampled(model, False, kv_cache=True).completions)   # measuring draws nothing
    assert cached.log_ratio.abs().max() > 1e-4
    refreshed = sampled(model, kv_cache=True, kv_refresh_every=1)
    assert not refreshed.log_ratio.any() and not refreshed.reranked.any()


def test_importance_weights_by_hand():
    """Ratios 1/2, 3 and 3/2 with C = 2: tis caps 3 at 2; mis drops it (0) and keeps the others."""
    log_ratio = torch.tensor([math.log(0.5), math.log(3.0), math.log(1.5)])
    torch.testing.assert_close(importance_weights(log_ratio, "tis", 2.0), torch.tensor([0.5, 2.0, 1.5]))
    torch.testing.assert_close(importance_weights(log_ratio, "mis", 2.0), torch.tensor([0.5, 0.0, 1.5]))
    assert importance_weights(torch.tensor([1e4]), "tis", 2.0).item() == pytest.approx(2.0)   # no overflow


def test_the_objectives_weight_their_rollout_terms_by_hand():
    """mu = 1 (old = current): GDSD's terms are (psi A)^2, ESPO's and diffu-GRPO's surrogates A, SPG's
    A score len. A = (1, -2), w = (1/2, 2)."""
    adv, w = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 2.0])
    d = torch.zeros(2, 1)
    loss, _ = gdsd_loss(d, d, adv, 1.0, 4e-4, 16, weight=w)
    assert loss.item() == pytest.approx((0.5 * 1 + 2 * 4) / 2)
    loss, _ = espo_loss(torch.zeros(2), torch.zeros(2), adv, 0.2, 16, weight=w)
    assert loss.item() == pytest.approx(-(0.5 * 1 + 2 * -2) / 2)
    token_w = torch.tensor([[0.5, 1.0], [2.0, 0.0]])           # diffu-GRPO: one weight per token
    loss, _ = diffu_grpo_loss(torch.zeros(2, 2), torch.zeros(2, 2), adv, torch.ones(2, 2, dtype=torch.bool), 0.5,
                              weight=token_w)
    assert loss.item() == pytest.approx(-(0.5 * 1 + 1 * 1 + 2 * -2 + 0) / 4)
    loss, _ = spg_loss(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 3.0]), adv, torch.tensor([2.0, 1.0]), 0.5,
                       weight=w)
    assert loss.item() == pytest.approx(-(0.5 * 1 * 1 * 2 + 2 * -2 * 3 * 1) / 3)


@pytest.mark.parametrize("overrides, phrase", [
    (["rollout.importance_correction=tis"], "needs sampler.kv_cache=true"),
    (["rollout.importance_correction=is", "sampler.kv_cache=true"], "must be one of none, tis, mis"),
    (["rollout.importance_correction=mis", "sampler.kv_cache=true", "rollout.importance_cap=0"],
     "importance_cap must be positive"),
    (["rollout.mismatch_every=-1"], "mismatch_every must be 0"),
    (["rollout.sampler.steps=4"], "rollout.sampler.steps: only the fast-mode keys"),
    (["rollout.sampler.fast_threshold=1.5"], "with rollout.sampler: sampler.fast_threshold must be in"),
])
def test_bad_importance_settings_are_refused_in_one_sentence(overrides, phrase):
    with pytest.raises(UserError, match=phrase):
        load_experiment("gdsd_tiny_sudoku", overrides)


def test_the_correction_is_refused_where_it_has_no_meaning():
    with pytest.raises(UserError, match="cannot be used with dmpo: its group softmax already self-normalises"):
        load_experiment("dmpo_tiny_sudoku", ["rollout.importance_correction=tis", "sampler.kv_cache=true"])
    for method in ("gdsd", "espo", "diffu_grpo", "wd1", "spg"):
        load_experiment(f"{method}_tiny_sudoku", ["rollout.importance_correction=tis", "sampler.kv_cache=true"])


def test_rollout_sampler_sets_fast_mode_for_the_rollouts_only():
    cfg = load_experiment("gdsd_tiny_sudoku", ["rollout.sampler.kv_cache=true", "rollout.sampler.fast_threshold=0.9"])
    fast = rollout_sampler(cfg)
    assert (fast.kv_cache, fast.fast_threshold) == (True, 0.9)
    assert (cfg.sampler.kv_cache, cfg.sampler.fast_threshold) == (False, None)     # evaluation stays exact
    assert {k: v for k, v in vars(fast).items() if k not in ("kv_cache", "fast_threshold", "temperature")} == \
        {k: v for k, v in cfg.sampler.items() if k not in ("kv_cache", "fast_threshold", "temperature")}
    assert fast.temperature == cfg.rollout.temperature                # the rollouts' own temperature
    with pytest.raises(UserError, match="sampler.kv_cache cannot be used with dopsd"):
        load_experiment("dopsd_tiny_sudoku", ["rollout.sampler.kv_cache=true"])


@pytest.mark.parametrize("cache_key", ["sampler.kv_cache", "rollout.sampler.kv_cache"])
def test_a_cached_run_with_tis_logs_its_mismatch_and_weights(tmp_path, varied_reward, cache_key):
    cfg = load_experiment("gdsd_tiny_sudoku", rl_overrides(tmp_path, 2, run_name="tis", **{
        cache_key: "true", "rollout.importance_correction": "tis", "trainer.logger": "csv"}))
    run_dir = train(cfg)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [r["rollout"] for r in summary["rollout_curve"]] == [1] and summary["rollout_seconds"] >= 0
    record = summary["rollout_curve"][0]
    assert record["mean_abs_log_ratio"] > 0 and 0 < record["weight_mean"] <= 2.0
    assert record["max_abs_log_ratio"] >= record["mean_abs_log_ratio"]
    header = next((run_dir / "csv").rglob("metrics.csv")).read_text().splitlines()[0]
    assert "rollout/mismatch/reranked_fraction" in header and "rollout/seconds" in header
