"""`python -m gdsd_lightning dopsd-probe dopsd_tiny_sudoku`: what d-OPSD's teacher knows that its student does not.

d-OPSD distils the policy at its own sampler states x_s towards a teacher that sees the same state
with int(rho n) of the n later positions revealed from the rollout's own final tokens
(objectives/dopsd.py). It can only improve the policy where that teacher predicts the answer
better than the student. This probe draws d-OPSD's rollouts from the experiment's starting model
(its rollout settings: passk, the kept attempt, the gate) and, at every state the loss trains on
and each of the k positions it picks, compares the greedy tokens of

    student   argmax p_theta(. | x_s)
    teacher   argmax p_theta(. | x_s, rho of the future from the rollout's own final tokens)
    oracle    argmax p_theta(. | x_s, rho of the future from the reference answer, task.target)

with the reference answer's token (`*_accuracy`) and with the rollout's own final token
(`*_agreement`), and reports the mean of the loss's divergence terms (before the clamp) and how
often the teacher's token differs from the student's (`changed`) and is then the right one
(`changed_to_right`, `changed_to_wrong`). On a task whose answers have one fixed layout (sudoku's
16 cells) the reference token at a position is the answer there; elsewhere it is one of several.

    -> <out>/dopsd_probe.json   the figures, the experiment, the number of rollouts and states
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gdsd_lightning.data import load_split
from gdsd_lightning.diffusion.estimators import with_prompt
from gdsd_lightning.diffusion.masking import generator_for
from gdsd_lightning.experiment import load_experiment
from gdsd_lightning.errors import UserError
from gdsd_lightning.models.build import build_policy
from gdsd_lightning.module import DiffusionRLModule
from gdsd_lightning.objectives.dopsd import (block_layout, loss_positions, teacher_view, topk_divergence,
                                             trained_states)
from gdsd_lightning.tasks import task_from_config


def dopsd_probe(experiment: str, rollouts: int = 4, split: str = "train",
                out: str = "results/dopsd_probe", overrides: list[str] = ()) -> str:
    """Probe d-OPSD's teacher on `rollouts` rollout batches of `split`; write and return the figures."""
    cfg = load_experiment(experiment, list(overrides))
    if cfg.method.name != "dopsd":
        raise UserError(f"dopsd-probe needs a d-OPSD experiment; {experiment!r} trains method {cfg.method.name!r}")
    torch.manual_seed(cfg.seed)
    task = task_from_config(cfg.task)
    module = DiffusionRLModule(cfg, build_policy(cfg), task)
    module.eval()
    policy, objective = module.policy, module.objective
    examples, _ = load_split(task, cfg.task, split)
    per_batch = cfg.rollout.prompts_per_step
    totals: dict[str, float] = {}
    counts = {"rollout_rows": 0, "gated_rows": 0, "states": 0, "positions": 0}
    with torch.no_grad():
        for index in range(rollouts):
            chunk = examples[index * per_batch:(index + 1) * per_batch]
            if len(chunk) < per_batch:
                raise UserError(f"dopsd-probe: the {split} split has {len(examples)} prompts, fewer than {rollouts} "
                                f"rollouts x {per_batch} (rollout.prompts_per_step)")
            batch = module.rollout(chunk)
            module.rollouts_done += 1
            repeated = [ex for ex in chunk for _ in range(cfg.rollout.num_generations)]
            reference = policy.encode_completions([task.target(ex) for ex in repeated], cfg.sampler.gen_length)
            counts["rollout_rows"] += batch.rows
            batch = objective.prepare(policy, module.reference, batch)
            for name, value in probe_batch(policy, objective, batch, reference.to(batch.completions.device),
                                           counts).items():
                totals[name] = totals.get(name, 0.0) + value
    positions = max(counts["positions"], 1)
    figures = {name: value / positions for name, value in totals.items()}
    changed = max(totals.get("changed", 0.0), 1.0)
    figures.update(changed_to_right=totals.get("changed_to_right", 0.0) / changed,
                   changed_to_wrong=totals.get("changed_to_wrong", 0.0) / changed)
    report = {"experiment": experiment, "overrides": list(overrides), "split": split, "rollouts": rollouts,
              **counts, "figures": figures}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "dopsd_probe.json").write_text(json.dumps(report, indent=2) + "\n")
    return json.dumps(report, indent=2)


def probe_batch(policy, objective, batch, reference: torch.Tensor, counts: dict) -> dict[str, float]:
    """Summed figures over the gated rows' trained states and loss positions of one prepared batch."""
    states, blocks = batch.extras["states"], batch.extras["state_blocks"]
    _, block_length = block_layout(blocks, states.shape[-1])
    picks = trained_states(batch, range(objective.cfg.num_iterations))
    counts["gated_rows"] += int(batch.extras["gate"].sum())
    if not picks:
        return {}
    row_of, state_of = (torch.tensor(index) for index in zip(*picks))
    # prepare's counts and permutations, the reference answer's tokens in place of the rollout's
    oracle_states = teacher_view(states, reference, blocks, block_length, objective.cfg.rho, batch.extras["counted"],
                                 policy.eos_id, generator_for(batch.mask_seed(0, 0), states.device))
    views = {"student": (policy, states), "teacher": (objective.teacher, batch.extras["teacher_states"]),
             "oracle": (objective.teacher, oracle_states)}
    prompt_ids, prompt_mask = batch.prompt_ids[row_of], batch.prompt_mask[row_of]
    prompt_len = prompt_ids.shape[1]
    block_cols = blocks[row_of, state_of].unsqueeze(1) * block_length + torch.arange(block_length)
    logits = {name: model.logits_at(*with_prompt(prompt_ids, prompt_mask, view[row_of, state_of]),
                                    prompt_len + block_cols).float() for name, (model, view) in views.items()}
    masked = states[row_of, state_of].gather(1, block_cols) == policy.mask_id
    order = loss_positions(logits["teacher"], masked, objective.gen_length // states.shape[1])
    picked = {name: torch.take_along_dim(value, order.unsqueeze(-1), dim=1) for name, value in logits.items()}
    tokens = {name: value.argmax(-1) for name, value in picked.items()}
    cols = block_cols.gather(1, order)
    answer, own = reference[row_of].gather(1, cols), batch.completions[row_of].gather(1, cols)
    top = picked["teacher"].topk(min(objective.cfg.top_k_vocab, picked["teacher"].shape[-1]), dim=-1)
    terms = topk_divergence(picked["student"].gather(-1, top.indices).log_softmax(-1), top.values.log_softmax(-1),
                            objective.cfg.beta, float("inf"))
    changed = tokens["teacher"] != tokens["student"]
    counts["states"] += len(picks)
    counts["positions"] += order.numel()
    sums = {f"{name}_accuracy": (value == answer).sum().item() for name, value in tokens.items()}
    sums.update({f"{name}_agreement": (value == own).sum().item() for name, value in tokens.items()})
    sums.update(divergence=terms.sum(-1).sum().item(), changed=changed.sum().item(),
                changed_to_right=(changed & (tokens["teacher"] == answer)).sum().item(),
                changed_to_wrong=(changed & (tokens["student"] == answer)).sum().item())
    return sums
