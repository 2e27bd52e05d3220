"""d-OPSD: the self-future teacher view, the clamped top-k divergence, the gate."""

import math
import zlib

import pytest
import torch

from gdsd_lightning.diffusion.masking import generator_for
from gdsd_lightning.objectives.dopsd import teacher_view, topk_divergence

ln = math.log


def test_teacher_view_reveals_a_fraction_of_the_future_and_nothing_else():
    mask, length, block = 1, 16, 4
    final = torch.randint(5, 50, (6, length))
    blocks = torch.tensor([0, 0, 1, 2, 3, 1])
    states = final.clone()
    for row, b in enumerate(blocks.tolist()):          # decoded before the block, partly in it, masked after
        states[row, b * block + 2:] = mask
    view = teacher_view(states, final, blocks, block, rho=0.25, generator=generator_for(7))
    for row, b in enumerate(blocks.tolist()):
        end = (b + 1) * block
        assert torch.equal(view[row, :end], states[row, :end]), "teacher input differs at or before the block"
        changed = view[row, end:] != states[row, end:]
        assert changed.sum().item() == round(0.25 * (length - end))
        assert torch.equal(view[row, end:][changed], final[row, end:][changed])
    again = teacher_view(states, final, blocks, block, rho=0.25, generator=generator_for(8))
    assert not torch.equal(view, again), "a fresh draw should reveal other positions"


def test_reverse_kl_with_the_elementwise_clamp_matches_a_hand_value():
    student = torch.tensor([[ln(.5), ln(.5)]], requires_grad=True)
    teacher = torch.tensor([[ln(.8), ln(.2)]])
    terms = topk_divergence(student, teacher, beta=1.0, clamp=0.05)
    # p (log p - log q): .5 ln(.5/.8) = -0.2350; .5 ln(.5/.2) = 0.4581 -> clamped to 0.05
    assert torch.allclose(terms, torch.tensor([[.5 * ln(.5 / .8), 0.05]]), atol=1e-6)
    terms.sum().backward()
    # d/dlog p of p (log p - log q) = p (log p - log q) + p; the clamped element gives nothing
    assert torch.allclose(student.grad, torch.tensor([[.5 * ln(.5 / .8) + .5, 0.0]]), atol=1e-6)
    # the elementwise clamp's flaw, by hand: the gradient lowers log p of the token the student
    # already under-weights (0.5 against the teacher's 0.8): a step moves away from the teacher
    assert student.grad[0, 0] > 0
    per_position = topk_divergence(student.detach(), teacher, beta=1.0, clamp=1.0, scope="position")
    assert per_position.shape == (1,) and per_position.item() == pytest.approx(.5 * ln(.5 / .8) + .5 * ln(.5 / .2))
    assert topk_divergence(student.detach(), teacher, beta=1.0, clamp=0.05, scope="position").item() == pytest.approx(0.05)
    forward = topk_divergence(student.detach(), teacher, beta=0.0, clamp=10.0)
    assert forward.sum().item() == pytest.approx(.8 * ln(.8 / .5) + .2 * ln(.2 / .5))
    jsd = topk_divergence(student.detach(), teacher, beta=0.5, clamp=10.0)
    m = [.65, .35]
    expected = .5 * (.8 * ln(.8 / m[0]) + .2 * ln(.2 / m[1])) + .5 * (.5 * ln(.5 / m[0]) + .5 * ln(.5 / m[1]))
    assert jsd.sum().item() == pytest.approx(expected, rel=1e-5)


def test_the_gate_drops_wrong_rollouts_and_skips_when_none_is_left(tiny_llada):
    from gdsd_lightning.config import load_experiment
    from gdsd_lightning.generation import sample
    from gdsd_lightning.objectives import OBJECTIVES
    from gdsd_lightning.objectives.base import RolloutBatch

    cfg = load_experiment("dopsd_tiny_sudoku", ["method.gate_min_reward=null"])   # gate on `correct`
    ids, mask = tiny_llada.encode_prompts(["12\n", "3456\n", "7\n"])
    out = sample(tiny_llada, ids, mask, cfg.sampler, 1.0, generator_for(0), record_states=True)
    objective = OBJECTIVES["dopsd"](cfg.method, cfg.sampler.gen_length)

    def batch(correct):
        b = RolloutBatch(ids, mask, out.completions, torch.ones_like(out.completions, dtype=torch.bool),
                         torch.zeros(3), torch.zeros(3), seed=1, group_size=1, correct=torch.tensor(correct))
        b.extras.update(states=torch.stack(out.states, 1),
                        state_blocks=torch.tensor(out.state_blocks).expand(3, -1))
        return b

    kept = objective.prepare(tiny_llada, tiny_llada, batch([True, False, True]))
    assert kept.rows == 2 and torch.equal(kept.completions, out.completions[[0, 2]])
    assert kept.stats["gate_pass_fraction"] == pytest.approx(2 / 3)
    k = cfg.sampler.gen_length // cfg.sampler.steps
    assert kept.extras["positions"].shape == (2, cfg.sampler.steps, k)
    loss, _ = objective.loss(tiny_llada, kept, 0)
    assert torch.isfinite(loss)
    assert objective.prepare(tiny_llada, tiny_llada, batch([False, False, False])).rows == 0


def test_dopsd_trains_when_some_rollouts_pass_and_stops_clearly_when_none_do(tmp_path, monkeypatch):
    from gdsd_lightning.train import train
    from gdsd_lightning.config import load_experiment
    from gdsd_lightning.errors import UserError
    from gdsd_lightning.models import DiffusionLM
    from gdsd_lightning.models.build import build_policy
    from gdsd_lightning.tasks.sudoku import Sudoku
    from tests.conftest import rl_overrides, weights

    monkeypatch.setattr(Sudoku, "is_correct", lambda self, c, ex: zlib.crc32(c.encode()) % 3 == 0)
    gate = {"rollout.num_generations": 1, "method.gate_min_reward": "null"}     # gate on `correct`
    cfg = load_experiment("dopsd_tiny_sudoku", rl_overrides(tmp_path, 2, **gate, **{"rollout.passk": 2}))
    before = weights(build_policy(cfg))
    after = weights(DiffusionLM.load(train(cfg) / "final"))
    assert any(not torch.equal(before[k], after[k]) for k in before)

    monkeypatch.setattr(Sudoku, "is_correct", lambda self, c, ex: False)
    stuck = load_experiment("dopsd_tiny_sudoku",
                            rl_overrides(tmp_path, 2, **gate, **{"trainer.max_skipped_in_a_row": 3}))
    with pytest.raises(UserError, match="^3 rollouts in a row"):
        train(stuck)
