"""Rollout scores shared by several objectives, each replaying the masks of (rollout, iteration, mc).

    coupled_sequence_scores   stratified coupled pairs -> D or the coupled ELBO    (GDSD, TLC, ESPO)
    mean_field_logprobs       completion fully masked, prompt masked with p        (diffu-GRPO, wd1)

and the KL-to-reference anchor on sequence scores (GDSD, TLC, ESPO), `with_k2_anchor`.
"""

from __future__ import annotations

from typing import Callable

import torch

from gdsd_lightning.diffusion.estimators import completion_logprobs, coupled_logprobs
from gdsd_lightning.diffusion.masking import full_completion_mask, generator_for, stratified_mask
from gdsd_lightning.models.adapter import DiffusionLM
from gdsd_lightning.objectives.base import RolloutBatch

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


def mean_field_logprobs(model: DiffusionLM, batch: RolloutBatch, iteration: int, p_mask_prompt: float) -> torch.Tensor:
    """One-step mean-field log-probs (B, L): log p(x_l | prompt with tokens masked w.p. p, completion
    fully masked), the prompt mask fresh per inner iteration (d1)."""
    gen = generator_for(batch.mask_seed(iteration, 0), batch.completions.device)
    prompt_masked, masked = full_completion_mask(batch.rows, batch.completions.shape[1], batch.prompt_ids.shape[1],
                                                 p_mask_prompt, gen)
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
