"""DMPO against values computed by hand on tiny tensors, its masks, and one short training run."""

import copy
import json
import math

import pytest
import torch

from gdsd_lightning.diffusion.masking import antithetic_masks, generator_for
from gdsd_lightning.objectives.base import RolloutBatch
from gdsd_lightning.objectives.dmpo import DMPO, DMPOConfig, dmpo_loss, dmpo_weights, masked_mean_logprobs

ln = math.log


def test_dmpo_weights_tilt_towards_reward_and_the_reference_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5])
    log_rnd = torch.tensor([0.0, ln(2), 0.0, 0.0])
    w = dmpo_weights(rewards, log_rnd, group_size=2, alpha=0.5)
    e2 = math.e ** 2
    # group 0: w+ = softmax([0 + 2, ln 2 + 0]), w- = softmax([0 - 2, ln 2 - 0])
    w0 = e2 / (e2 + 2) - math.e ** -2 / (math.e ** -2 + 2)
    assert torch.allclose(w, torch.tensor([w0, -w0, 0.0, 0.0]), atol=1e-6)   # a tie in the group: no signal
    doubled = dmpo_weights(rewards, log_rnd, group_size=2, alpha=0.5, coeff=2.0)
    w0_doubled = e2 ** 2 / (e2 ** 2 + 4) - math.e ** -4 / (math.e ** -4 + 4)      # c scales both logits
    assert doubled[0].item() == pytest.approx(w0_doubled, rel=1e-6)


def test_dmpo_masked_mean_and_weighted_cross_entropy_by_hand():
    logp = torch.tensor([[[ln(.5), ln(.25), ln(.8)]], [[ln(.5), ln(.25), ln(.8)]]], requires_grad=True)  # (K=2, B=1, L=3)
    masks = torch.tensor([[[True, True, False]], [[False, False, True]]])
    per_replicate = masked_mean_logprobs(logp, masks)
    assert torch.allclose(per_replicate, torch.tensor([[(ln(.5) + ln(.25)) / 2], [ln(.8)]]), atol=1e-6)
    assert masked_mean_logprobs(logp, torch.zeros_like(masks)).abs().sum().item() == 0.0   # m clamped at 1

    two_rows = torch.tensor([[-1.0, -3.0], [-2.0, -1.0]], requires_grad=True)   # (K=2, B=2): CE = [1.5, 2.0]
    weights = torch.tensor([0.4, -0.4])
    loss = dmpo_loss(two_rows, weights, group_size=2)
    assert loss.item() == pytest.approx(0.4 * 1.5 - 0.4 * 2.0)                 # one group
    loss.backward()
    # d loss / d logp[k, i] = -w_i / K: raise the likelihood where w > 0, lower it where w < 0
    assert torch.allclose(two_rows.grad, torch.tensor([[-0.2, 0.2], [-0.2, 0.2]]))


def test_dmpo_device_batch_scale_is_the_release_sum_over_a_device_batch():
    """dmpo_trainer.py:182: loss = sum over the device batch of sum(CE) / m x A, / num_replicates (the
    replicates' mean): two rows of a group of 4 give 0.4 x 1.5 - 0.4 x 2.0 = -0.2, where `groups`
    divides by the half group these rows are: -0.4 (G / device rows = 2 times the release's)."""
    two_rows = torch.tensor([[-1.0, -3.0], [-2.0, -1.0]])   # CE = [1.5, 2.0]
    weights = torch.tensor([0.4, -0.4])
    assert dmpo_loss(two_rows, weights, group_size=4, scale="device_batch").item() == pytest.approx(-0.2)
    assert dmpo_loss(two_rows, weights, group_size=4).item() == pytest.approx(-0.4)
    with pytest.raises(Exception, match="method.loss_scale must be"):
        DMPO(DMPOConfig(loss_scale="rows"), gen_length=6)


def test_antithetic_masks_pair_complements_with_rates_from_the_clamped_range():
    masks = antithetic_masks(4, 2000, 512, generator_for(0))
    assert masks.shape == (4, 2000, 512)
    assert torch.equal(masks[2], ~masks[0]) and torch.equal(masks[3], ~masks[1])
    rates = masks[:2].float().mean(dim=-1).flatten()
    assert rates.min() > 0.0 and rates.mean().item() == pytest.approx(0.55, abs=0.02)   # lambda ~ U[0.1, 1)
    assert (rates < 0.05).float().mean() < 0.005                                       # unclamped: about 5%
    assert torch.equal(masks, antithetic_masks(4, 2000, 512, generator_for(0)))


def test_prepare_gives_pure_reward_weights_when_policy_and_reference_agree(tiny_llada):
    ids, mask = tiny_llada.encode_prompts(["12\n", "34\n"])
    ids, mask = ids.repeat_interleave(2, 0), mask.repeat_interleave(2, 0)
    completions = torch.randint(10, 20, (4, 6))
    rewards = torch.tensor([1.0, 0.0, 0.25, 0.75])
    batch = RolloutBatch(ids, mask, completions, torch.ones_like(completions, dtype=torch.bool), rewards,
                         torch.zeros(4), seed=5, group_size=2)
    objective = DMPO(DMPOConfig(num_iterations=1), gen_length=6)
    prepared = objective.prepare(tiny_llada, copy.deepcopy(tiny_llada), batch)
    assert prepared.stats["log_rnd"] == 0.0                    # same weights, same masks: the ELBOs agree
    assert torch.allclose(prepared.extras["weight"], dmpo_weights(rewards, torch.zeros(4), 2, 0.04), atol=1e-6)
    loss, metrics = objective.loss(tiny_llada, prepared, 0)
    assert loss.requires_grad and metrics["cross_entropy"] > 0


def test_dmpo_trains_and_refuses_odd_replicates(tmp_path, varied_reward):
    from gdsd_lightning.commands.train import train
    from gdsd_lightning.experiment import load_experiment
    from gdsd_lightning.errors import UserError
    from tests.conftest import rl_overrides

    run_dir = train(load_experiment("dmpo_tiny_sudoku", rl_overrides(tmp_path, 4, **{"trainer.ref_sync_every_n_steps": 2})))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 4 and all(a == a for _, a in summary["val_accuracy"])
    with pytest.raises(UserError, match="num_replicates even"):
        DMPO(DMPOConfig(num_replicates=3), gen_length=6)


def test_dmpo_references_the_fixed_base_as_the_release():
    """The release scores the reference with the LoRA adapters disabled (dmpo_trainer.py:252): the
    base, never refreshed, whatever run_dmpo.sh's sync flags say."""
    from gdsd_lightning.experiment import load_experiment

    assert load_experiment("dmpo_tiny_sudoku").trainer.ref_sync_every_n_steps == 0
