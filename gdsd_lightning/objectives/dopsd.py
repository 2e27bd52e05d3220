"""d-OPSD: on-policy self-distillation from the "self-future" (the d-OPSD release's dOPSDTrainer).

The module keeps one rollout per row (`rollout.passk` attempts, the kept one chosen by
`rollout.passk_keep`) with every intermediate state x_s of the block sampler. The states that
count (the release's trajectory) are those before each step while a mask remains before the
state's own first EOS, never in the last block (`record_last_block` lifts that); they are the
first T steps of the rollout. For such a state s in block b, s < T - 1:

    teacher input  x_s with int(rho n) of the n positions after block b overwritten by the
                   rollout's own final tokens (a uniform permutation of the n positions per
                   state); nothing is revealed when block b + 1 starts at or after the final
                   completion's first EOS. Prompt, decoded tokens and block b are unchanged.
                   Teacher weights: the frozen initial model (`fixed_teacher`) or the current
                   policy, without gradient, at the optimiser step that uses the state.
    positions      the k = L / steps still-masked positions of block b with the largest teacher
                   logit (the maximum over the vocabulary of the raw logits)
    divergence     student p = p_theta(. | x_s) and teacher q at those positions, both restricted to
                   the teacher's top_k_vocab tokens (of the raw logits) and renormalised, elementwise:
                       beta = 1   reverse KL   p (log p - log q)
                       beta = 0   forward KL   q (log q - log p)
                       otherwise  generalised JSD  beta q (log q - log m) + (1 - beta) p (log p - log m),
                                  m = beta q + (1 - beta) p
                   each element clamped from above at `clamp` (a clamped element has no gradient)
                   (`clamp_scope=position`: each position's sum over the vocabulary is clamped
                   instead. The elementwise clamp can reward moving away from the teacher: with a
                   token over-weighted beyond the clamp, the loss still falls by lowering the
                   student's probability of tokens it under-weights, whose terms are negative.)
    loss           the states 0..T-2 split into mu = `num_iterations` (the release's batch_divide)
                   chunks of c = (T - 1) // mu, the last (T - 1) - mu c states dropped; optimiser
                   step i uses chunk i:
                       loss_i = mean over rows r of  g_r sum_{s in chunk i of r} sum(clamped elements) / c_r

Gate g_r: 1 when the kept rollout is verified correct (or, with `gate_min_reward` set, its reward
reaches it: the release's sudoku rule is a cell accuracy >= 0.25), else 0. A failing row keeps a
zero loss, so a rollout where every row fails still makes its mu optimiser steps on a zero loss
(AdamW's momentum and weight decay move the weights), as the release does on every GPU;
`skip_gated` drops the failing rows instead (the mean is over the passing ones) and skips a
rollout without any. A row with T - 1 < mu (the release stops with an error) counts with g_r = 0.
The LM head runs only at the positions the loss uses (`DiffusionLM.logits_at`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from gdsd_lightning.diffusion.estimators import with_prompt
from gdsd_lightning.diffusion.masking import generator_for
from gdsd_lightning.errors import UserError
from gdsd_lightning.models.adapter import DiffusionLM
from gdsd_lightning.objectives.base import Objective, ObjectiveConfig, RolloutBatch, zero_loss


@dataclass
class DOPSDConfig(ObjectiveConfig):
    name: str = "dopsd"
    num_iterations: int = 4            # batch_divide: state chunks per rollout, one optimiser step each (every
                                       # release script: BATCH_DIVIDE=4, d-opsd/run/*/opsd.sh)
    beta: float = 1.0                  # 1 reverse KL, 0 forward KL, between: generalised JSD
    rho: float = 0.25                  # fraction of the future positions the teacher sees
    top_k_vocab: int = 20              # teacher's top tokens the divergence is restricted to
    clamp: float = 0.05                # clamp from above (0.04 for MATH)
    clamp_scope: str = "element"       # element (recipe) | position: clamp each position's summed divergence
    fixed_teacher: bool = True         # teacher = frozen initial model (else the current policy)
    gate_min_reward: Optional[float] = None  # None: train on verified-correct rollouts only
    skip_gated: bool = False           # False (release): failing rows keep a zero loss and the steps happen
    record_last_block: bool = False    # also train on the last block's states (the release never does)

    def problems(self, cfg=None) -> list[str]:
        problems = super().problems(cfg)
        if self.clamp_scope not in ("element", "position"):
            problems.append(f"method.clamp_scope must be 'element' or 'position', got {self.clamp_scope!r}")
        return problems


def block_layout(state_blocks: torch.Tensor, length: int) -> tuple[int, int]:
    """(number of blocks, block length) of the sampler that recorded every step's block index."""
    num_blocks = int(state_blocks.max()) + 1
    return num_blocks, length // num_blocks


def recorded_states(states: torch.Tensor, blocks: torch.Tensor, num_blocks: int, mask_id: int, eos_id: int,
                    last_block: bool = False) -> torch.Tensor:
    """Number of leading states (N,) of (N, S, L) that count: a state counts while a mask remains
    before its own first EOS (anywhere, when it has none) and, unless `last_block`, its block is
    not the last. Once a state fails, every later one does (commits never move an EOS earlier)."""
    length = states.shape[-1]
    is_eos = states == eos_id
    first_eos = torch.where(is_eos.any(-1), is_eos.byte().argmax(-1), length)
    before = torch.arange(length, device=states.device) < first_eos.unsqueeze(-1)
    counts = ((states == mask_id) & before).any(-1)
    if not last_block:
        counts &= blocks < num_blocks - 1
    return counts.long().cumprod(1).sum(1)


def teacher_view(states: torch.Tensor, final: torch.Tensor, blocks: torch.Tensor, block_length: int, rho: float,
                 counted: torch.Tensor, eos_id: int, generator: torch.Generator) -> torch.Tensor:
    """Teacher inputs (N, S, L): state s < T - 1 of row r with int(rho n) of the n positions after
    its block replaced by the final tokens `final` (N, L), chosen by a permutation drawn per state
    (rows, then states, in order); nothing replaced when that future starts at or after the
    final completion's first EOS. Every position up to the end of the current block is kept."""
    length = states.shape[-1]
    view = states.clone()
    is_eos = final == eos_id
    first_eos = torch.where(is_eos.any(-1), is_eos.byte().argmax(-1), length).tolist()
    for row, count in enumerate(counted.tolist()):
        for state in range(count - 1):
            start = (int(blocks[row, state]) + 1) * block_length
            reveal = int((length - start) * rho)
            if start >= first_eos[row] or reveal <= 0:
                continue
            picked = start + torch.randperm(length - start, generator=generator, device=generator.device)[:reveal]
            view[row, state, picked] = final[row, picked.to(final.device)]
    return view


def trained_states(batch: RolloutBatch, iterations: range) -> list[tuple[int, int]]:
    """(row, state) pairs the loss trains on at optimiser steps `iterations` (after `prepare`):
    step i takes states i c_r .. (i + 1) c_r - 1 of each gated row r, c_r its `chunk`."""
    chunk, gate = batch.extras["chunk"].tolist(), batch.extras["gate"].tolist()
    return [(row, state) for row in range(batch.rows) if gate[row]
            for step in iterations for state in range(step * chunk[row], (step + 1) * chunk[row])]


def loss_positions(teacher_logits: torch.Tensor, still_masked: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (S, k) of the k still-masked positions (S, n) with the largest raw teacher logit,
    max over the vocabulary of `teacher_logits` (S, n, V) (the release's confidence: a logit, not
    a probability)."""
    confidence = teacher_logits.amax(-1).masked_fill(~still_masked, -torch.inf)
    return confidence.topk(k, dim=1).indices


def topk_divergence(student_logp: torch.Tensor, teacher_logp: torch.Tensor, beta: float, clamp: float,
                    scope: str = "element") -> torch.Tensor:
    """Divergence terms of renormalised log-probs (..., V'), clamped from above at `clamp`: per
    vocabulary element (`element`, same shape as the inputs: the recipe) or per position after
    summing over the vocabulary (`position`, shape (...))."""
    p, q = student_logp.exp(), teacher_logp.exp()
    if beta == 1.0:
        terms = p * (student_logp - teacher_logp)
    elif beta == 0.0:
        terms = q * (teacher_logp - student_logp)
    else:
        log_m = torch.logsumexp(torch.stack([teacher_logp + torch.log(torch.tensor(beta)),
                                             student_logp + torch.log(torch.tensor(1 - beta))]), dim=0)
        terms = beta * q * (teacher_logp - log_m) + (1 - beta) * p * (student_logp - log_m)
    if scope == "position":
        terms = terms.sum(-1)
    return terms.clamp(max=clamp)


class DOPSD(Objective):
    Config = DOPSDConfig
    record_states = True
    uses_groups = False
    needs_old = False
    importance_refusal = "it distils at the sampler's recorded states, where no sequence probability is weighted"

    roles = {"reference": "fixed_teacher"}   # the teacher: the frozen initial model, else the policy itself

    def __init__(self, cfg, gen_length: int):
        super().__init__(cfg, gen_length)
        self.teacher: DiffusionLM | None = None      # set by prepare: the network the loss distils from

    @torch.no_grad()
    def prepare(self, policy: DiffusionLM, reference: DiffusionLM | None, batch: RolloutBatch) -> RolloutBatch:
        """Gate the rows and build the teacher inputs: extras teacher_states (N, S, L), counted (N,)
        states that count, chunk (N,) states per optimiser step, gate (N,) rows that train."""
        passed = batch.correct if self.cfg.gate_min_reward is None else batch.rewards >= self.cfg.gate_min_reward
        stats = {"gate_pass_fraction": passed.float().mean().item()}
        if self.cfg.skip_gated:
            batch, passed = batch.select(passed), passed[passed]
        batch.stats = stats
        self.teacher = reference if self.cfg.fixed_teacher else policy
        if batch.rows == 0:
            return batch
        states, blocks = batch.extras["states"], batch.extras["state_blocks"]       # (N, S, L), (N, S)
        num_blocks, block_length = block_layout(blocks, states.shape[-1])
        if num_blocks == 1 and not self.cfg.record_last_block:
            raise UserError("d-OPSD trains on the states before the last block (as the release), but the sampler "
                            "has one block only; use sampler.block_length < sampler.gen_length or "
                            "method.record_last_block=true")
        counted = recorded_states(states, blocks, num_blocks, policy.mask_id, policy.eos_id, self.cfg.record_last_block)
        chunk = (counted - 1).clamp(min=0) // self.cfg.num_iterations
        batch.extras.update(
            teacher_states=teacher_view(states, batch.completions, blocks, block_length, self.cfg.rho, counted,
                                        policy.eos_id, generator_for(batch.mask_seed(0, 0), states.device)),
            counted=counted, chunk=chunk, gate=passed & (chunk > 0))
        batch.stats.update(counted_states=counted.float().mean().item(),
                           too_short_fraction=(passed & (chunk == 0)).float().mean().item())
        return batch

    def loss(self, policy: DiffusionLM, batch: RolloutBatch, iteration: int):
        picks = trained_states(batch, range(iteration, iteration + 1))                 # this step's chunk
        if not picks:
            return zero_loss(policy), {"states_used": torch.tensor(0.0)}
        row_of, state_of = (torch.tensor(index) for index in zip(*picks))
        states = batch.extras["states"][row_of, state_of]                              # (S', L)
        blocks = batch.extras["state_blocks"][row_of, state_of]
        prompt_ids, prompt_mask = batch.prompt_ids[row_of], batch.prompt_mask[row_of]
        prompt_len = prompt_ids.shape[1]
        _, block_length = block_layout(batch.extras["state_blocks"], states.shape[1])
        block_cols = blocks.unsqueeze(1) * block_length + torch.arange(block_length, device=states.device)
        teacher_inputs = with_prompt(prompt_ids, prompt_mask, batch.extras["teacher_states"][row_of, state_of])
        with torch.no_grad():
            teacher = self.teacher.logits_at(*teacher_inputs, prompt_len + block_cols).float()   # (S', block, V)
        order = loss_positions(teacher, states.gather(1, block_cols) == policy.mask_id,
                               self.gen_length // batch.extras["states"].shape[1])          # k per step
        picked = torch.take_along_dim(teacher, order.unsqueeze(-1), dim=1)                  # (S', k, V)
        top = picked.topk(min(self.cfg.top_k_vocab, teacher.shape[-1]), dim=-1)
        student = policy.logits_at(*with_prompt(prompt_ids, prompt_mask, states), prompt_len + block_cols.gather(1, order))
        terms = topk_divergence(student.float().gather(-1, top.indices).log_softmax(-1), top.values.log_softmax(-1),
                                self.cfg.beta, self.cfg.clamp, self.cfg.clamp_scope)
        per_state = terms.flatten(1).sum(1)
        per_row = torch.zeros(batch.rows, device=terms.device).index_add(0, row_of.to(terms.device), per_state)
        loss = (per_row / batch.extras["chunk"].clamp(min=1)).mean()
        return loss, {"divergence": loss.detach(), "clamped_fraction": (terms >= self.cfg.clamp).float().mean(),
                      "states_used": torch.tensor(float(len(picks)))}
