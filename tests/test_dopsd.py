"""d-OPSD as the release computes it: the states that count, the self-future teacher view, the
clamped top-k divergence, the per-row chunks, the gate's zero-loss steps and pass@k."""

import math

import pytest
import torch

from gdsd_lightning.diffusion.masking import generator_for
from gdsd_lightning.objectives.dopsd import loss_positions, recorded_states, teacher_view, topk_divergence

ln = math.log
M, EOS = 1, 2          # mask and eos ids of the hand-made states


def test_states_count_while_a_mask_precedes_their_first_eos_and_never_in_the_last_block():
    # L = 6 in blocks of 2, one token per step. Row 0: state 1 has EOS at 1 with a mask before it
    # (counts); state 2 has nothing masked before its EOS: it and every later state stop counting.
    # Row 1 never commits an EOS; its states count until the last block (states 4, 5).
    row0 = [[M] * 6, [M, EOS, M, M, M, M], [7, EOS, M, M, M, M], [7, EOS, 8, M, M, M],
            [7, EOS, 8, 9, M, M], [7, EOS, 8, 9, 5, M]]
    row1 = [[M] * 6, [5] + [M] * 5, [5, 6] + [M] * 4, [5, 6, 7, M, M, M], [5, 6, 7, 8, M, M], [5, 6, 7, 8, 9, M]]
    states = torch.tensor([row0, row1])
    blocks = torch.tensor([[0, 0, 1, 1, 2, 2]] * 2)
    assert recorded_states(states, blocks, 3, M, EOS).tolist() == [2, 4]
    assert recorded_states(states, blocks, 3, M, EOS, last_block=True).tolist() == [2, 6]


def test_teacher_view_reveals_int_rho_n_future_positions_until_the_future_starts_at_the_eos():
    length, block = 10, 2
    final = torch.tensor([[11, 12, 13, 14, 15, EOS, 17, 18, 19, 20]])    # first EOS at 5
    blocks = torch.tensor([[0, 2, 1, 3]])
    states = torch.full((1, 4, length), M)
    view = teacher_view(states, final, blocks, block, 0.25, torch.tensor([4]), EOS, generator_for(5))
    # state 0 (block 0): future 2..9, n = 8, int(0.25 * 8) = 2 revealed; state 1 (block 2): the
    # future starts at 6 >= the EOS at 5, nothing revealed; state 2 (block 1): future 4..9, n = 6,
    # int(1.5) = 1 (round() would reveal 2); state 3 = T - 1 gets no view. One permutation per state.
    replay = generator_for(5)
    first = 2 + torch.randperm(8, generator=replay)[:2]
    third = 4 + torch.randperm(6, generator=replay)[:1]
    expected = states.clone()
    expected[0, 0, first] = final[0, first]
    expected[0, 2, third] = final[0, third]
    assert torch.equal(view, expected)


def test_loss_positions_are_the_masked_ones_with_the_largest_raw_teacher_logit():
    # position 0: logits (5, 5): max logit 5, max probability 0.5; position 1: (4, 0): logit 4,
    # probability 0.98; position 2: the largest logit, but already decoded. By logit: 0 first
    # (by probability 1 would come first).
    teacher = torch.tensor([[[5.0, 5.0], [4.0, 0.0], [9.0, 0.0]]])
    assert loss_positions(teacher, torch.tensor([[True, True, False]]), 1).tolist() == [[0]]
    assert loss_positions(teacher, torch.tensor([[True, True, False]]), 2).tolist() == [[0, 1]]


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


def _rollout(tiny_llada, overrides, correct):
    """A d-OPSD objective and a 3-row rollout of 16 tokens in two blocks of 8."""
    from gdsd_lightning.experiment import load_experiment
    from gdsd_lightning.diffusion.sampler import SamplerConfig
    from gdsd_lightning.generation import sample
    from gdsd_lightning.objectives import OBJECTIVES
    from gdsd_lightning.objectives.base import RolloutBatch

    cfg = load_experiment("dopsd_tiny_countdown", ["method.gate_min_reward=null", "sampler.block_length=8",
                                                    *overrides])   # gate on `correct`
    ids, mask = tiny_llada.encode_prompts(["12\n", "3456\n", "7\n"])
    out = sample(tiny_llada, ids, mask, SamplerConfig.of(cfg.sampler).at(temperature=1.0), generator_for(0),
                 record_states=True)
    batch = RolloutBatch(ids, mask, out.completions, torch.ones_like(out.completions, dtype=torch.bool),
                         torch.zeros(3), torch.zeros(3), seed=1, group_size=1, correct=torch.tensor(correct))
    batch.extras.update(states=torch.stack(out.states, 1), state_blocks=torch.tensor(out.state_blocks).expand(3, -1))
    return OBJECTIVES["dopsd"](cfg.method, cfg.sampler.gen_length), batch


def test_failing_rows_count_as_zero_in_the_mean_and_each_step_takes_its_rows_chunk(tiny_llada):
    objective, batch = _rollout(tiny_llada, ["method.num_iterations=2"], [True, False, True])
    prepared = objective.prepare(tiny_llada, tiny_llada, batch)
    assert prepared.rows == 3 and prepared.extras["gate"].tolist() == [True, False, True]
    counted = recorded_states(batch.extras["states"], batch.extras["state_blocks"], 2, tiny_llada.mask_id, tiny_llada.eos_id)
    assert prepared.extras["chunk"].tolist() == ((counted - 1) // 2).tolist()      # c = (T - 1) // batch_divide
    loss, metrics = objective.loss(tiny_llada, prepared, 1)
    assert metrics["states_used"].item() == prepared.extras["chunk"][[0, 2]].sum().item()
    alone = [objective.loss(tiny_llada, prepared.select(torch.arange(3) == row), 1)[0] for row in (0, 2)]
    assert loss.item() == pytest.approx((alone[0].item() + 0.0 + alone[1].item()) / 3, rel=1e-3)   # not / 2
    skipping, again = _rollout(tiny_llada, ["method.num_iterations=2", "method.skip_gated=true"], [True, False, True])
    dropped = skipping.prepare(tiny_llada, tiny_llada, again)
    assert dropped.rows == 2 and torch.equal(dropped.completions, batch.completions[[0, 2]])


def test_a_policy_teacher_is_the_policy_at_the_step_that_uses_the_state(tiny_llada):
    objective, batch = _rollout(tiny_llada, ["method.fixed_teacher=false"], [True, True, True])
    prepared = objective.prepare(tiny_llada, None, batch)
    with torch.no_grad():
        tiny_llada.model.lm_head.weight.mul_(1.5)           # an optimiser step after the rollout
    after_step, _ = objective.loss(tiny_llada, prepared, 0)
    # the release distils from the current weights (d_opsd_trainer.py:248-249): the same loss as with
    # the rollout prepared after the step (same states, same seed, so the same teacher inputs)
    fresh = objective.prepare(tiny_llada, None, batch)
    assert after_step.item() == pytest.approx(objective.loss(tiny_llada, fresh, 0)[0].item(), rel=1e-6)


def test_a_rollout_that_fails_the_gate_still_steps_on_a_zero_loss_unless_skip_gated(tmp_path, monkeypatch):
    from gdsd_lightning.commands.train import train
    from gdsd_lightning.experiment import load_experiment
    from gdsd_lightning.errors import UserError
    from gdsd_lightning.models import DiffusionLM
    from gdsd_lightning.models.build import build_policy
    from gdsd_lightning.tasks.sudoku import Sudoku
    from tests.conftest import rl_overrides, weights

    monkeypatch.setattr(Sudoku, "is_correct", lambda self, c, ex: False)
    gate = {"rollout.num_generations": 1, "method.gate_min_reward": "null", "optim.weight_decay": 0.1}
    cfg = load_experiment("dopsd_tiny_sudoku", rl_overrides(tmp_path, 2, **gate))
    before = weights(build_policy(cfg))
    run = train(cfg)
    after = weights(DiffusionLM.load(run / "final"))
    # zero gradients, yet AdamW's decoupled weight decay moves every weight: w <- w (1 - lr_t wd) at
    # each of the rollout's two steps, lr_t = 1e-3 t / 10 in the 10-step warm-up (the first at 0)
    decay = (1 - 0.0 * 0.1) * (1 - 1e-4 * 0.1)
    key = next(k for k in before if before[k].abs().sum() > 0)
    assert not torch.equal(after[key], before[key])
    assert torch.allclose(after[key], before[key] * decay, rtol=1e-6, atol=0)

    stuck = load_experiment("dopsd_tiny_sudoku", rl_overrides(
        tmp_path, 2, **gate, **{"method.skip_gated": "true", "trainer.max_skipped_in_a_row": 3}))
    with pytest.raises(UserError, match="^3 rollouts in a row"):
        train(stuck)


def test_passk_keeps_the_first_correct_else_the_last_or_the_best_with_ties_to_the_later(monkeypatch):
    from gdsd_lightning.experiment import load_experiment
    from gdsd_lightning.models.build import build_policy
    from gdsd_lightning.module import DiffusionRLModule
    from gdsd_lightning.tasks import get_task

    # rows 0-2, three attempts; per attempt (reward, correct) and a tag for the completion
    script = [{0: (.2, False), 1: (.5, True), 2: (.6, False)},
              {0: (.9, False), 1: (.1, False), 2: (.6, False)},
              {0: (.3, False), 1: (.5, True), 2: (.4, False)}]

    def module(keep):
        cfg = load_experiment("dopsd_tiny_sudoku", ["model.init_from=null", "rollout.num_generations=1",
                                                    "rollout.passk=3", f"rollout.passk_keep={keep}"])
        m = DiffusionRLModule(cfg, build_policy(cfg), get_task("sudoku"))
        calls = iter(range(len(script)))

        def attempt(prompt_ids, prompt_mask, examples, rows, generator):     # completions hold the attempt's index
            index = next(calls)
            this = script[index]
            return {"completions": torch.full((len(rows), 16), index), "texts": [f"attempt {index}"] * len(rows),
                    "entropy": torch.zeros(len(rows)),
                    "rewards": torch.tensor([this[r][0] for r in rows.tolist()]),
                    "correct": torch.tensor([this[r][1] for r in rows.tolist()]),
                    "metrics": torch.zeros(len(rows), 1),                       # sudoku's solve_rate
                    "states": torch.zeros(len(rows), 8, 16, dtype=torch.long),
                    "state_blocks": torch.zeros(len(rows), 8, dtype=torch.long)}

        monkeypatch.setattr(m, "attempt", attempt)
        return m

    example = {"Puzzle": "0" * 16, "Solution": "1234341221434321"}
    first = module("first_correct").rollout([example] * 3)
    # row 1 is correct at attempt 0 and keeps it; rows 0 and 2 never are: their last attempt (2)
    assert first.completions[:, 0].tolist() == [2, 0, 2] and first.rewards.tolist() == pytest.approx([.3, .5, .4])
    best = module("best_reward").rollout([example] * 3)
    # every attempt runs; row 0 keeps its best (1), row 1 the later of two equal rewards (2), row 2 likewise (1)
    assert best.completions[:, 0].tolist() == [1, 2, 1] and best.rewards.tolist() == pytest.approx([.9, .5, .6])


def test_the_probe_compares_teacher_and_student_on_the_trained_states(tmp_path):
    """dopsd-probe: with nothing revealed (rho 0) the teacher sees the student's input, so every
    figure of the teacher and the oracle equals the student's and the divergence is 0; with a
    future revealed they differ, and each trained state contributes the loss's k positions."""
    import json

    from gdsd_lightning.commands.dopsd_probe import dopsd_probe
    from tests.conftest import rl_overrides

    def probe(rho: float) -> dict:
        overrides = rl_overrides(tmp_path, 1, **{"method.gate_min_reward": 0.0, "method.rho": rho})
        dopsd_probe("dopsd_tiny_sudoku", rollouts=2, out=str(tmp_path / f"rho{rho}"), overrides=overrides)
        return json.loads((tmp_path / f"rho{rho}" / "dopsd_probe.json").read_text())

    blind, seeing = probe(0.0), probe(1.0)
    assert blind["gated_rows"] == blind["rollout_rows"] == 2 * 2 * 4     # 2 rollouts x 2 prompts x G 4
    k = 16 // 8                                                          # gen_length / steps
    assert blind["positions"] == k * blind["states"] > 0
    figures = blind["figures"]
    for measure in ("accuracy", "agreement"):
        assert figures[f"teacher_{measure}"] == figures[f"oracle_{measure}"] == figures[f"student_{measure}"]
    assert figures["changed"] == 0 and abs(figures["divergence"]) < 1e-6
    assert seeing["figures"]["divergence"] > 1e-4
    assert seeing["figures"]["oracle_accuracy"] != seeing["figures"]["teacher_accuracy"] or \
        seeing["figures"]["teacher_agreement"] != seeing["figures"]["student_agreement"]
