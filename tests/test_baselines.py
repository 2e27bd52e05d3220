"""The ELBO-based baselines against values computed by hand on tiny tensors."""

import math

import pytest
import torch

from gdsd_lightning.objectives.diffu_grpo import diffu_grpo_loss
from gdsd_lightning.objectives.espo import espo_loss
from gdsd_lightning.objectives.spg import spg_bounds, spg_loss
from gdsd_lightning.objectives.wd1 import wd1_loss, wd1_weights

ln = math.log


def test_diffu_grpo_clips_on_both_signs_and_adds_k3():
    # ratios [[2, 1], [2, 1]]; row 1's second token is after EOS (invalid)
    logp = torch.tensor([[ln(.5), ln(.25)], [ln(.8), ln(.1)]], requires_grad=True)
    old = torch.tensor([[ln(.25), ln(.25)], [ln(.4), ln(.1)]])
    valid = torch.tensor([[True, True], [True, False]])
    adv = torch.tensor([1.0, -1.0])
    # A=+1, ratio 2: min(2, 1.5) = 1.5 (clipped); A=+1, ratio 1: 1; A=-1, ratio 2: min(-2, -1.5) = -2
    loss, metrics = diffu_grpo_loss(logp, old, adv, valid, eps=0.5)
    assert loss.item() == pytest.approx(-(1.5 + 1 - 2) / 3)
    assert metrics["clip_binding_fraction"].item() == pytest.approx(1 / 3)
    loss.backward()
    # clipped token: no gradient; unclipped: d/dlogp of -A ratio / 3 = -A ratio / 3; invalid: none
    assert torch.allclose(logp.grad, torch.tensor([[0.0, -1 / 3], [2 / 3, 0.0]]))

    ref = logp.detach().clone()
    ref[0, 1] = ln(.5)                       # k3 = e^{ln 2} - ln 2 - 1 = 1 - ln 2 on that token
    with_kl, metrics = diffu_grpo_loss(logp, old, adv, valid, eps=0.5, logp_ref=ref, beta=0.1)
    assert with_kl.item() == pytest.approx(-(0.5) / 3 + 0.1 * (1 - ln(2)) / 3)
    assert metrics["kl_ref"].item() == pytest.approx((1 - ln(2)) / 3)


def test_wd1_group_softmax_weights_and_loss():
    adv = torch.tensor([1.0, 0.0, -1.0, 0.3, 0.3, 0.3])
    w = wd1_weights(adv, group_size=3)
    s = math.e + 1 + 1 / math.e
    expected = (math.e - 1 / math.e) / s       # softmax(A)_0 - softmax(-A)_0
    assert torch.allclose(w, torch.tensor([expected, 0.0, -expected, 0.0, 0.0, 0.0]), atol=1e-6)
    seq_logp = torch.tensor([-2.0, -5.0, -3.0, -1.0, -1.0, -1.0])
    # - (w0 (-2) + w2 (-3)) / 2 groups = - expected (-2 + 3) / 2
    assert wd1_loss(seq_logp, w, 3).item() == pytest.approx(-expected * (-2 + 3) / 2, rel=1e-5)


def test_spg_elbo_eubo_and_the_sandwich_for_negative_advantages():
    # draws-first (D=2, B=2, L=2). Row 0: draw 0 masks token 0 (t_hat 1/2), draw 1 masks both (t_hat 1).
    # Row 1: both draws mask only token 0, so token 1 is never masked and the EUBO skips it.
    logp = torch.tensor([[[ln(.5), ln(.25)], [ln(.8), ln(.3)]],
                         [[ln(.5), ln(.5)], [ln(.8), ln(.3)]]])
    weights = torch.tensor([[[2.0, 0.0], [2.0, 0.0]],
                            [[1.0, 1.0], [2.0, 0.0]]])
    valid = torch.ones(2, 2, dtype=torch.bool)
    elbo, eubo = spg_bounds(logp, weights, valid, beta_eubo=1.0)
    # ELBO_0 = mean_l mean_d w log p = ((2+1)/2 ln .5 + (0+1)/2 ln .5) / 2 = ln .5; ELBO_1 = (2 ln .8) / 2
    assert torch.allclose(elbo, torch.tensor([ln(.5), ln(.8)]), atol=1e-6)
    # EUBO_0 = (ln((2*.5 + .5)/2) + ln((0 + .5)/2)) / 2; EUBO_1 = ln((2*.8 + 2*.8)/2)
    assert torch.allclose(eubo, torch.tensor([(ln(.75) + ln(.25)) / 2, ln(1.6)]), atol=1e-5)
    _, eubo_b2 = spg_bounds(logp, weights, valid, beta_eubo=2.0)
    assert eubo_b2[0].item() == pytest.approx((ln((2 * .25 + .25) / 2) + ln(.25 / 2)) / 4, rel=1e-5)

    adv, lengths = torch.tensor([1.0, -1.0]), torch.tensor([2.0, 2.0])
    loss, _ = spg_loss(elbo, eubo, adv, lengths, eubo_weight=0.5)
    # row 0 (A > 0) scores with the ELBO, row 1 with (EUBO + ELBO) / 2 = ln(1.6 * .8) / 2
    assert loss.item() == pytest.approx(-(1 * ln(.5) * 2 - 1 * ln(1.28) / 2 * 2) / 4, rel=1e-5)


def test_espo_clips_the_sequence_ratio_on_both_signs():
    length = 4
    old = torch.tensor([-10.0, -10.0, -10.0])
    elbo = (old + torch.tensor([length * ln(2), length * ln(.5), 0.0])).requires_grad_()   # rho = 2, 1/2, 1
    adv = torch.tensor([1.0, -1.0, 0.5])
    # min(2, 1.2) = 1.2 (clipped); min(-0.5, -0.8) = -0.8 (clipped); 0.5 unclipped
    loss, metrics = espo_loss(elbo, old, adv, eps=0.2, length=length)
    assert loss.item() == pytest.approx(-(1.2 - 0.8 + 0.5) / 3)
    assert metrics["clip_binding_fraction"].item() == pytest.approx(2 / 3)
    loss.backward()
    assert torch.allclose(elbo.grad, torch.tensor([0.0, 0.0, -0.5 / (length * 3)]))
    ref = elbo.detach() - torch.tensor([2.0, 0.0, 0.0])
    with_kl, _ = espo_loss(elbo, old, adv, eps=0.2, length=length, elbo_ref=ref, beta=0.3)
    assert with_kl.item() == pytest.approx(-0.3 + 0.3 * 0.5 * 4 / (3 * length))


def test_d1_mask_seeds_follow_the_release_micro_step_count_unless_fresh(tiny_llada):
    """d1 / wd1 draw mask_seeds[_step % mu], _step counting micro-steps: with accumulation 2 and mu 4,
    micro-step _step = 2 i + m at inner iteration i of micro-batch m, so micro-batch 0 draws masks
    0, 2, 0, 2 and micro-batch 1 masks 1, 3, 1, 3 (each of mu/2 = 2 masks twice)."""
    from gdsd_lightning.diffusion.estimators import completion_logprobs
    from gdsd_lightning.diffusion.masking import full_completion_mask, generator_for
    from gdsd_lightning.objectives import OBJECTIVES
    from gdsd_lightning.objectives.base import RolloutBatch
    from gdsd_lightning.objectives.scores import mask_iteration

    assert [mask_iteration(i, 0, 2, 4, "release") for i in range(4)] == [0, 2, 0, 2]
    assert [mask_iteration(i, 1, 2, 4, "release") for i in range(4)] == [1, 3, 1, 3]
    # d1's GSM8K layout (mu 12, accumulation 2): _step = 2 i + m, 6 masks each twice
    assert [mask_iteration(i, 1, 2, 12, "release") for i in range(12)] == [1, 3, 5, 7, 9, 11] * 2
    assert [mask_iteration(i, 1, 2, 4, "fresh") for i in range(4)] == [0, 1, 2, 3]

    gen = torch.Generator().manual_seed(0)
    ids, completions = torch.randint(10, 40, (4, 8), generator=gen), torch.randint(10, 40, (4, 4), generator=gen)
    batch = RolloutBatch(ids, torch.ones_like(ids), completions, torch.ones_like(completions, dtype=torch.bool),
                         torch.zeros(4), torch.zeros(4), seed=5, group_size=2)
    for rule, expected in {"release": [[0, 2, 0, 2], [1, 3, 1, 3]], "fresh": [[0, 1, 2, 3]] * 2}.items():
        cfg = OBJECTIVES["diffu_grpo"].Config(num_iterations=4, micro_batch_size=2, p_mask_prompt=0.5,
                                              mask_seed_rule=rule)
        for micro, masks in zip(batch.split(2), expected):
            assert micro.num_micro == 2
            for iteration, j in enumerate(masks):
                prompt_masked, masked = full_completion_mask(2, 4, 8, 0.5, generator_for(micro.mask_seed(j, 0)))
                want = completion_logprobs(tiny_llada, micro.prompt_ids, micro.prompt_mask, micro.completions, masked,
                                           prompt_masked)
                got = OBJECTIVES["diffu_grpo"](cfg, 4).score(tiny_llada, micro, iteration)
                assert torch.equal(got, want), (rule, micro.micro, iteration)


def test_spg_mask_seeds_follow_the_release_micro_step_count(tiny_llada):
    """SPG draws mask_seeds[_step % mu] too (facebookresearch/SPG spg_trainer.py:101): in its sudoku
    layout (per-device 3 x accumulation 4, mu 4) micro-step _step = 4 i + m, so micro-batch m draws
    mask m at every inner iteration; `fresh` draws mask i."""
    from gdsd_lightning.objectives import OBJECTIVES
    from gdsd_lightning.objectives.base import RolloutBatch
    from gdsd_lightning.objectives.scores import mask_iteration

    assert [[mask_iteration(i, m, 4, 4, "release") for i in range(4)] for m in range(4)] == [[m] * 4 for m in range(4)]
    gen = torch.Generator().manual_seed(1)
    ids, completions = torch.randint(10, 40, (8, 6), generator=gen), torch.randint(10, 40, (8, 8), generator=gen)
    batch = RolloutBatch(ids, torch.ones_like(ids), completions, torch.ones_like(completions, dtype=torch.bool),
                         torch.zeros(8), torch.tensor([1.0, -1.0] * 4), seed=7, group_size=2)
    losses = {}
    for rule in ("release", "fresh"):
        cfg = OBJECTIVES["spg"].Config(num_iterations=4, micro_batch_size=2, block_length=4, num_mc=2,
                                       mask_seed_rule=rule)
        micro = list(batch.split(2))[1]
        losses[rule] = [OBJECTIVES["spg"](cfg, 8).loss(tiny_llada, micro, i)[0].item() for i in range(4)]
    assert losses["release"] == [losses["fresh"][1]] * 4           # mask 1 at every iteration
    assert len(set(losses["fresh"])) == 4
