"""Rollout scores shared by several objectives, each replaying the masks of (rollout, iteration, mc).

    coupled_sequence_scores   stratified coupled pairs -> D or the coupled ELBO    (GDSD, TLC, ESPO)
    mean_field_logprobs       completion fully masked, prompt masked with p        (diffu-GRPO, wd1)

and the KL-to-reference anchor on sequence scores (GDSD, TLC, ESPO), `with_k2_anchor`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from gdsd_lightning.diffusion.estimators import completion_logprobs, coupled_logprobs
from gdsd_lightning.diffusion.masking import full_completion_mask, generator_for, stratified_mask
from gdsd_lightning.models.adapter import DiffusionLM
from gdsd_lightning.objectives.base import ObjectiveConfig, RolloutBatch

MASK_SEED_RULES = ("release", "fresh")     # method.mask_seed_rule (`mask_iteration`)

Reduce = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def coupled_sequence_scores(model: DiffusionLM, batch: RolloutBatch, iteration: int, num_mc: int,
                            reduce: Reduce, center_logits: bool = False, mask_after_eos: bool = False) -> torch.Tensor:
    """Sequence scores (B, K): for each Monte-Carlo draw a stratified mask and its complement,
    both views in one forward, reduced by `reduce` (`denoiser_score` or `coupled_elbo`)."""
    scores = []
    for mc in range(num_mc):
        gen = generator_for(batch.mask_seed(iteration, mc), batch.completions.device)
        masked, _ = stratified_mask(batch.rows, batch.completions.shape[1], gen)
        view, comp = coupled_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.completions,
                                      masked, center_logits=center_logits)
        scores.append(reduce(view, comp, masked, batch.valid if mask_after_eos else None))
    return torch.stack(scores, dim=1)


@dataclass
class MicroStepSeedConfig(ObjectiveConfig):
    """Fields of the objectives whose releases pick a mask seed per micro-step (d1, wd1, SPG)."""

    mask_seed_rule: str = "release"    # which mask each inner iteration draws (`mask_iteration`)

    def problems(self, cfg=None) -> list[str]:
        problems = super().problems(cfg)
        if self.mask_seed_rule not in MASK_SEED_RULES:
            problems.append(f"method.mask_seed_rule must be {' or '.join(map(repr, MASK_SEED_RULES))}, "
                            f"got {self.mask_seed_rule!r}")
        return problems


@dataclass
class MeanFieldConfig(MicroStepSeedConfig):
    """Fields of the objectives scored by `mean_field_logprobs` (diffu-GRPO, wd1)."""

    p_mask_prompt: float = 0.15        # prompt tokens masked per inner iteration


def mask_iteration(iteration: int, micro: int, num_micro: int, mu: int, rule: str) -> int:
    """The mask index j whose prompt mask micro-batch `micro` (of `num_micro` in the rollout) draws at
    inner iteration `iteration` of mu:

        release  j = (iteration * num_micro + micro) mod mu
        fresh    j = iteration

    `release` is d1's, wd1's and SPG's `mask_seeds[_step % mu]`, `_step` counting micro-steps
    (dllm-reasoning/d1 `diffu_grpo_trainer.py:96`, xiaohangt/wd1 `rev_grpo_trainer.py:140`,
    facebookresearch/SPG `spg_trainer.py:101`): with accumulation 2 and mu even a micro-batch draws
    mu/2 distinct masks, each twice; with n = mu (SPG sudoku: 4 and 4) one mask at every iteration.
    With one micro-batch both rules agree."""
    if rule == "release":
        return (iteration * num_micro + micro) % mu
    if rule == "fresh":
        return iteration
    raise ValueError(f"unknown method.mask_seed_rule {rule!r}; use {' or '.join(MASK_SEED_RULES)}")


def micro_step_generator(batch: RolloutBatch, iteration: int, cfg: MicroStepSeedConfig) -> torch.Generator:
    """The mask generator of this micro-batch at inner iteration `iteration`: seeded with
    `batch.mask_seed(j, 0)`, j = `mask_iteration(...)` under `cfg.mask_seed_rule`."""
    j = mask_iteration(iteration, batch.micro, batch.num_micro, cfg.num_iterations, cfg.mask_seed_rule)
    return generator_for(batch.mask_seed(j, 0), batch.completions.device)


def mean_field_logprobs(model: DiffusionLM, batch: RolloutBatch, iteration: int, cfg: MeanFieldConfig) -> torch.Tensor:
    """One-step mean-field log-probs (B, L): log p(x_l | prompt with tokens masked w.p. p, completion
    fully masked), the prompt mask drawn from `micro_step_generator`."""
    gen = micro_step_generator(batch, iteration, cfg)
    prompt_masked, masked = full_completion_mask(batch.rows, batch.completions.shape[1], batch.prompt_ids.shape[1],
                                                 cfg.p_mask_prompt, gen)
    return completion_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.completions, masked, prompt_masked)


def with_k2_anchor(loss: torch.Tensor, metrics: dict[str, torch.Tensor], score: torch.Tensor,
                   ref: torch.Tensor | None, beta: float, length: int) -> torch.Tensor:
    """`loss` plus the k2 KL to the reference on sequence scores (B, ...) of completions of `length`
    tokens, logged as metrics["kl_ref"]; `loss` itself without a reference score:

        loss + beta sum 1/2 (score - ref)^2 / (number of scores x L)
    """
    if ref is None:
        return loss
    kl = (0.5 * (score - ref) ** 2).sum() / (score.numel() * length)
    metrics["kl_ref"] = kl.detach()
    return loss + beta * kl
