"""diffu-GRPO (d1): per-token PPO on one-step mean-field log-probs.

    logp_l  = log p_theta(x_l | prompt masked w.p. p_mask_prompt, completion fully masked)
    ratio_l = exp(logp_l - logp_old_l)
    loss    = - mean over valid tokens [ w_l min(ratio_l A, clip(ratio_l, 1 - eps, 1 + eps) A)
                                         - beta k3_l ],   k3 = exp(ref - logp) - (ref - logp) - 1

The prompt mask of inner iteration i on micro-batch m is mask (i n + m) mod mu of the n micro-batches
(`method.mask_seed_rule: release`, d1's rule) or mask i (`fresh`): `scores.mask_iteration`.
Valid tokens run up to and including the first EOS; A is the sequence's advantage. The token
mean is over the micro-batch (exact when a rollout is one micro-batch, as in the tiny configs).
`clip_binding_fraction` = (valid tokens where the clipped branch is the minimum, the clip binds) /
(valid tokens): the complement, up to ties, of d1's `clip_ratio`, which counts the tokens where the
unclipped term is the smaller (the clip does not bind).
w_l: rollout.importance_correction's weight of token l (1 when off), the ratio of the probability
the exact model gives the committed token at the state where the sampler committed it to the
sampler's (truncated IS of autoregressive stacks, per token).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gdsd_lightning.models.adapter import DiffusionLM
from gdsd_lightning.objectives.base import Objective, RolloutBatch
from gdsd_lightning.objectives.scores import MeanFieldConfig, mean_field_logprobs


@dataclass
class DiffuGRPOConfig(MeanFieldConfig):
    name: str = "diffu_grpo"
    num_iterations: int = 8            # recipe: 12 on GSM8K/MATH, 8 on sudoku/countdown
    advantage: str = "group_mean"
    eps: float = 0.5                   # PPO clip range
    beta: float = 0.04                 # k3 KL to the reference


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's min(ratio A, clip(ratio, 1-eps, 1+eps) A) and where the clipped branch was taken."""
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - eps, 1 + eps) * advantages
    return torch.minimum(unclipped, clipped), clipped < unclipped


def k3_kl(logp: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(theta || ref): exp(ref - logp) - (ref - logp) - 1 >= 0."""
    diff = ref - logp
    return diff.exp() - diff - 1


def diffu_grpo_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, valid: torch.Tensor,
                    eps: float, logp_ref: torch.Tensor | None = None, beta: float = 0.0,
                    weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss on (B, L) per-token log-probs; see the module docstring."""
    surrogate, clipped = clipped_surrogate((logp - logp_old).exp(), advantages.unsqueeze(1), eps)
    per_token = -surrogate if weight is None else -weight * surrogate
    metrics = {"clip_binding_fraction": (clipped & valid).sum() / valid.sum()}
    if logp_ref is not None:
        kl = k3_kl(logp, logp_ref)
        per_token = per_token + beta * kl
        metrics["kl_ref"] = ((kl * valid).sum() / valid.sum()).detach()
    loss = (per_token * valid).sum() / valid.sum()
    return loss, metrics


class DiffuGRPO(Objective):
    Config = DiffuGRPOConfig
    roles = {"reference": "beta"}         # a KL anchor: the reference, built when beta > 0
    importance_level = "token"

    def score(self, model: DiffusionLM, batch: RolloutBatch, iteration: int) -> torch.Tensor:
        return mean_field_logprobs(model, batch, iteration, self.cfg)

    def loss(self, policy, batch: RolloutBatch, iteration: int):
        logp = self.score(policy, batch, iteration)
        logp_old, logp_ref = self.old_and_ref(batch, iteration, logp)
        return diffu_grpo_loss(logp, logp_old, batch.advantages, batch.valid, self.cfg.eps, logp_ref, self.cfg.beta,
                               batch.importance_weight)
