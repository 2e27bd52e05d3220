import math

import pytest
import torch

from gdsd_lightning.objectives.base import group_advantages
from gdsd_lightning.objectives.gdsd import gdsd_loss


def test_gdsd_loss_by_hand_with_a_clamped_term():
    # 2 rows, K = 1, L = 4, psi = 1, eps = 0.1: window [log 0.9, log 1.1] = [-0.1054, 0.0953]
    d_theta = torch.tensor([[0.05], [0.5]], requires_grad=True)
    d_old = torch.zeros(2, 1)
    advantages = torch.tensor([0.5, -0.5])
    loss, metrics = gdsd_loss(d_theta, d_old, advantages, psi=1.0, eps=0.1, length=4)
    row0 = (0.05 / 4 - 0.5) ** 2                       # inside the window: 0.23765625
    row1 = (math.log(1.1) / 4 + 0.5) ** 2              # clamped at log(1.1): 0.27439530
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    assert metrics["clamp_fraction"].item() == 0.5
    loss.backward()
    assert d_theta.grad[0, 0].item() == pytest.approx(2 * (0.05 / 4 - 0.5) / 4 / 2, rel=1e-6)
    assert d_theta.grad[1, 0].item() == 0.0, "a clamped term must carry no gradient"


def test_gdsd_k2_kl_term_by_hand():
    d_theta = torch.tensor([[0.05, 0.0], [0.5, -0.2]], requires_grad=True)   # K = 2
    d_old, d_ref = d_theta.detach().clone(), torch.zeros(2, 2)
    advantages = torch.tensor([1.0, -1.0])
    loss, metrics = gdsd_loss(d_theta, d_old, advantages, psi=2.0, eps=4e-4, length=4, d_ref=d_ref, beta=0.2)
    regression = 2 * (2.0 ** 2) * 2 / 2                 # r = 0 everywhere: (psi A)^2 per (row, mc) / B
    kl = 0.5 * (0.05**2 + 0.5**2 + 0.2**2) / (2 * 2 * 4)
    assert metrics["kl_ref"].item() == pytest.approx(kl, rel=1e-6)
    assert loss.item() == pytest.approx(regression + 0.2 * kl, rel=1e-6)
    loss.backward()
    # regression gradient -2 psi A / (L B) plus the KL gradient beta (D - D_ref) / (B K L)
    assert d_theta.grad[1, 0].item() == pytest.approx(-2 * 2.0 * -1.0 / (4 * 2) + 0.2 * 0.5 / 16, rel=1e-6)


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.5, 0.5, 0.5])
    assert group_advantages(rewards, 3, "group_mean", False).tolist() == pytest.approx(
        [2 / 3, -1 / 3, -1 / 3, 0, 0, 0])
    assert group_advantages(rewards, 3, "leave_one_out", False).tolist() == pytest.approx(
        [1.0, -0.5, -0.5, 0, 0, 0])
    scaled = group_advantages(rewards, 3, "group_mean", True)
    assert scaled[0].item() == pytest.approx((2 / 3) / (torch.tensor([1.0, 0, 0]).std().item() + 1e-4))
    assert scaled[3:].abs().max().item() == 0.0


def test_gdsd_tlc_scores_with_the_coupled_elbo_and_centring_is_a_no_op(tiny_llada):
    from gdsd_lightning.experiment import load_experiment
    from gdsd_lightning.diffusion.estimators import completion_logprobs, coupled_elbo, coupled_logprobs
    from gdsd_lightning.diffusion.masking import generator_for, stratified_mask
    from gdsd_lightning.objectives import OBJECTIVES
    from gdsd_lightning.objectives.base import RolloutBatch

    ids, mask = tiny_llada.encode_prompts(["12\n", "3456\n"])
    completion = torch.randint(5, 100, (2, 8))
    masked = torch.rand(2, 8) < 0.5
    plain = completion_logprobs(tiny_llada, ids, mask, completion, masked)
    centred = completion_logprobs(tiny_llada, ids, mask, completion, masked, center_logits=True)
    assert torch.allclose(plain, centred, atol=1e-5)

    cfg = load_experiment("gdsd_tiny_sudoku", ["method.name=gdsd_tlc"]).method
    batch = RolloutBatch(ids, mask, completion, torch.ones_like(masked), torch.zeros(2), torch.zeros(2), seed=3, group_size=2)
    score = OBJECTIVES["gdsd_tlc"](cfg, 8).score(tiny_llada, batch, iteration=0)[:, 0]
    same_masks, _ = stratified_mask(2, 8, generator_for(batch.mask_seed(0, 0)))
    expected = coupled_elbo(*coupled_logprobs(tiny_llada, ids, mask, completion, same_masks), same_masks)
    assert torch.allclose(score, expected, atol=1e-4)


def test_attend_padding_attends_each_device_batchs_own_padding_by_hand():
    from gdsd_lightning.objectives.base import device_batch_attention

    lengths = [2, 3, 1, 4, 2, 2]                      # real prompt tokens, left-padded to P = 5
    mask = torch.tensor([[0] * (5 - n) + [1] * n for n in lengths])
    # device batches of 2 rows: longest prompts 3, 4, 2, so their columns start at 2, 1, 3
    assert device_batch_attention(mask, 2).tolist() == [[0, 0, 1, 1, 1]] * 2 + [[0, 1, 1, 1, 1]] * 2 + [[0, 0, 0, 1, 1]] * 2
    # of 4 rows (the last batch 2 rows): longest 4 and 2; 0: one batch of all six rows, longest 4
    assert device_batch_attention(mask, 4).tolist() == [[0, 1, 1, 1, 1]] * 4 + [[0, 0, 0, 1, 1]] * 2
    assert device_batch_attention(mask, 0).tolist() == [[0, 1, 1, 1, 1]] * 6


@pytest.mark.parametrize("family", ["tiny_llada", "tiny_dream"])
def test_attend_padding_scores_a_device_batch_as_the_release_cut_to_its_own_width(family, request):
    """The release's device batch is tokenised on its own (left-padded to its longest prompt) and
    scored with no attention mask; ours sits in the rank's wider batch."""
    from gdsd_lightning.diffusion.estimators import completion_logprobs
    from gdsd_lightning.objectives.base import device_batch_attention

    model = request.getfixturevalue(family)
    gen = torch.Generator().manual_seed(0)
    lengths = [2, 4, 6, 3]
    ids = torch.randint(10, 40, (4, 6), generator=gen)
    mask = torch.tensor([[0] * (6 - n) + [1] * n for n in lengths])
    ids = torch.where(mask.bool(), ids, model.pad_id)
    completions, masked = torch.randint(10, 40, (4, 5), generator=gen), torch.rand(4, 5, generator=gen) < 0.5
    ours = completion_logprobs(model, ids, device_batch_attention(mask, 2), completions, masked)
    first = completion_logprobs(model, ids[:2, 2:], torch.ones(2, 4, dtype=torch.long), completions[:2], masked[:2])
    assert torch.allclose(ours[:2], first, atol=1e-5)       # rows 0-1: their batch is 4 wide
    whole = completion_logprobs(model, ids, torch.ones_like(mask), completions, masked)
    assert not torch.allclose(whole[:2], first, atol=1e-3)  # the rank's padding (6 wide) is not the release's


@pytest.mark.parametrize("attend", [False, True])
def test_attend_padding_scores_with_the_prompt_padding_attended_as_the_release(attend):
    from gdsd_lightning.experiment import load_experiment
    from gdsd_lightning.models.build import build_policy
    from gdsd_lightning.module import DiffusionRLModule
    from gdsd_lightning.tasks import get_task

    cfg = load_experiment("gdsd_tiny_countdown", ["model.init_from=null", "rollout.num_generations=2",
                                                  f"method.attend_padding={str(attend).lower()}"])
    module = DiffusionRLModule(cfg, build_policy(cfg), get_task("countdown"))
    short, long = {"input": "6,5,78", "output": "79"}, {"input": "74,67,74,11", "output": "92"}
    batch = module.rollout([short, long])
    assert (batch.prompt_ids[:2] == module.policy.pad_id).any()      # the short prompt is left-padded
    # the GDSD releases' scoring forwards take no attention mask: the padding is attended (here the
    # rank's rollout is one device batch, whose longest prompt fills the width)
    assert batch.prompt_mask.bool().all().item() is attend
