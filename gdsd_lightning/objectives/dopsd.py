"""d-OPSD: on-policy self-distillation from the "self-future".

The module keeps one rollout per row (pass@k: the first verified-correct attempt, else the best
rewarded) with every intermediate state x_s of the block sampler. For the state s in block b:

    teacher input  x_s with round(rho n) of the n positions after block b overwritten by the
                   rollout's own final tokens (a fresh draw per state); prompt, decoded tokens and
                   block b unchanged. Teacher weights: the frozen initial model (fixed_teacher) or
                   the rollout-time policy, no gradient either way.
    positions      the k = L / steps still-masked positions of block b where the teacher is most
                   confident (highest max-probability)
    divergence     student p = p_theta(. | x_s) and teacher q at those positions, both restricted to
                   the teacher's top_k_vocab tokens and renormalised, elementwise:
                       beta = 1   reverse KL   p (log p - log q)
                       beta = 0   forward KL   q (log q - log p)
                       otherwise  generalised JSD  beta q (log q - log m) + (1 - beta) p (log p - log m),
                                  m = beta q + (1 - beta) p
                   each element clamped from above at `clamp` (a clamped element has no gradient)
                   (`clamp_scope=position`: each position's sum over the vocabulary is clamped
                   instead. The elementwise clamp can reward moving away from the teacher: with a
                   token over-weighted beyond the clamp, the loss still falls by lowering the
                   student's probability of tokens it under-weights, whose terms are negative.)
    loss           sum of the clamped elements / number of states

Gate: rows whose kept rollout is wrong (not verified correct; or, when `gate_min_reward` is set,
reward below it) are dropped; with no row left the module skips the step instead of stepping
on a zero loss. States whose block starts after the completion's first EOS, or that hold fewer
than k masked positions in their block, are skipped and counted. The states are split into
mu = `num_iterations` chunks (the recipe's batch_divide), one optimiser step each. The LM head
runs only at the positions the loss uses (`DiffusionLM.logits_at`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from gdsd_lightning.diffusion.estimators import with_prompt
from gdsd_lightning.diffusion.masking import generator_for
from gdsd_lightning.diffusion.sampler import proposal_logits
from gdsd_lightning.errors import UserError
from gdsd_lightning.models.adapter import DiffusionLM
from gdsd_lightning.objectives.base import Objective, ObjectiveConfig, RolloutBatch, zero_loss


@dataclass
class DOPSDConfig(ObjectiveConfig):
    name: str = "dopsd"
    num_iterations: int = 1            # batch_divide: state chunks per rollout, one optimiser step each
    beta: float = 1.0                  # 1 reverse KL, 0 forward KL, between: generalised JSD
    rho: float = 0.25                  # fraction of the future positions the teacher sees
    top_k_vocab: int = 20              # teacher's top tokens the divergence is restricted to
    clamp: float = 0.05                # clamp from above (0.04 for MATH)
    clamp_scope: str = "element"       # element (recipe) | position: clamp each position's summed divergence
    fixed_teacher: bool = True         # teacher = frozen initial model (else rollout-time policy)
    gate_min_reward: Optional[float] = None  # None: train on verified-correct rollouts only


def teacher_view(states: torch.Tensor, final: torch.Tensor, blocks: torch.Tensor, block_length: int,
                 rho: float, generator: torch.Generator) -> torch.Tensor:
    """States (S, L) with round(rho n) of the n positions after each state's block replaced by the
    final tokens (S, L); every position up to the end of the current block is left as it is."""
    length = states.shape[1]
    future = torch.arange(length, device=states.device).unsqueeze(0) >= ((blocks + 1) * block_length).unsqueeze(1)
    count = torch.round(rho * future.sum(1).float()).long()
    scores = torch.rand(states.shape, generator=generator, device=generator.device).to(states.device)
    scores = torch.where(future, scores, torch.full_like(scores, 2.0))     # only future positions can rank first
    reveal = (scores.argsort(1).argsort(1) < count.unsqueeze(1)) & future
    return torch.where(reveal, final, states)


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

    def __init__(self, cfg, gen_length: int):
        super().__init__(cfg, gen_length)
        if cfg.clamp_scope not in ("element", "position"):
            raise UserError(f"method.clamp_scope must be 'element' or 'position', got {cfg.clamp_scope!r}")

    @property
    def needs_reference(self) -> bool:
        return self.cfg.fixed_teacher

    @torch.no_grad()
    def prepare(self, policy: DiffusionLM, reference: DiffusionLM | None, batch: RolloutBatch) -> RolloutBatch:
        """Gate the rows, then record per state the loss positions and the teacher's top-k tokens
        and renormalised log-probs there: extras positions (N, T, k), teacher_ids / teacher_logp
        (N, T, k, V), usable (N, T)."""
        passed = batch.correct if self.cfg.gate_min_reward is None else batch.rewards >= self.cfg.gate_min_reward
        stats = {"gate_pass_fraction": passed.float().mean().item()}
        batch = batch.select(passed)
        batch.stats = stats
        if batch.rows == 0:
            return batch
        states, blocks = batch.extras["states"], batch.extras["state_blocks"]       # (N, T, L), (N, T)
        rows, num_states, length = states.shape
        if self.cfg.num_iterations > num_states:
            raise ValueError(f"method.num_iterations ({self.cfg.num_iterations}) exceeds the sampler's "
                             f"{num_states} steps: d-OPSD splits the states into that many chunks")
        block_length = length // (int(blocks.max()) + 1)
        per_step = length // num_states
        flat_states, flat_blocks = states.flatten(0, 1), blocks.flatten()
        final = batch.completions.repeat_interleave(num_states, 0)
        prompt_ids = batch.prompt_ids.repeat_interleave(num_states, 0)
        prompt_mask = batch.prompt_mask.repeat_interleave(num_states, 0)
        teacher_states = teacher_view(flat_states, final, flat_blocks, block_length, self.cfg.rho,
                                      generator_for(batch.mask_seed(0, 0), states.device))
        prompt_len = prompt_ids.shape[1]
        block_cols = flat_blocks.unsqueeze(1) * block_length + torch.arange(block_length, device=states.device)
        teacher = reference if self.cfg.fixed_teacher else policy
        was_training = teacher.training
        teacher.eval()
        logits = proposal_logits(teacher, *with_prompt(prompt_ids, prompt_mask, teacher_states),
                                 prompt_len + block_cols)                      # (S, block_length, V)
        teacher.train(was_training)
        still_masked = flat_states.gather(1, block_cols) == policy.mask_id
        confidence = logits.softmax(-1).amax(-1).masked_fill(~still_masked, -1.0)   # decoded positions last
        order = confidence.topk(per_step, dim=1).indices                          # (S, k) block offsets
        picked_logits = torch.take_along_dim(logits, order.unsqueeze(-1), dim=1)                 # (S, k, V)
        top = picked_logits.topk(min(self.cfg.top_k_vocab, picked_logits.shape[-1]), dim=-1)
        usable = (still_masked.sum(1) >= per_step) & batch.valid.repeat_interleave(num_states, 0).gather(
            1, (flat_blocks * block_length).unsqueeze(1)).squeeze(1)
        shape = (rows, num_states)
        batch.extras.update(positions=(prompt_len + block_cols.gather(1, order)).view(*shape, per_step),
                            teacher_ids=top.indices.view(*shape, per_step, -1),
                            teacher_logp=top.values.log_softmax(-1).view(*shape, per_step, -1),
                            usable=usable.view(shape))
        batch.stats["unusable_state_fraction"] = 1.0 - usable.float().mean().item()
        return batch

    def loss(self, policy: DiffusionLM, batch: RolloutBatch, iteration: int):
        chunk = torch.tensor_split(torch.arange(batch.extras["states"].shape[1]), self.cfg.num_iterations)[iteration]
        usable = batch.extras["usable"][:, chunk]                               # (n, c)
        if not usable.any():
            return zero_loss(policy), {"states_used": torch.tensor(0.0)}
        pick = lambda key: batch.extras[key][:, chunk][usable]                  # noqa: E731  (S', ...)
        row_of_state = torch.arange(batch.rows).unsqueeze(1).expand_as(usable)[usable]
        inputs, attention = with_prompt(batch.prompt_ids[row_of_state], batch.prompt_mask[row_of_state], pick("states"))
        logits = proposal_logits(policy, inputs, attention, pick("positions"))  # (S', k, V)
        student_logp = logits.gather(-1, pick("teacher_ids")).log_softmax(-1)
        terms = topk_divergence(student_logp, pick("teacher_logp"), self.cfg.beta, self.cfg.clamp, self.cfg.clamp_scope)
        loss = terms.sum() / usable.sum()
        return loss, {"divergence": loss.detach(), "clamped_fraction": (terms >= self.cfg.clamp).float().mean(),
                      "states_used": usable.sum().float()}
