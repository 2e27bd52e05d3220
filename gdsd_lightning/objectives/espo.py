"""ESPO: sequence-level PPO on the coupled ELBO.

    rho  = exp((ELBO_theta - ELBO_old) / L)        ELBO = coupled ELBO averaged over K mask pairs
    loss = - mean_b w_b min(rho A, clip(rho, 1 - eps, 1 + eps) A)
           + beta sum_b 1/2 (ELBO_theta - ELBO_ref)^2 / (B L)       (GDSD's k2 anchor: scores.with_k2_anchor)

`clip_binding_fraction`: the fraction of rows whose clipped branch is the minimum (the clip binds).
Stratified coupled masks as in GDSD-TLC (without logit centring); leave-one-out advantages. w_b:
rollout.importance_correction's sequence weight (1 when off; the KL term is not weighted).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gdsd_lightning.diffusion.estimators import coupled_elbo
from gdsd_lightning.models.adapter import DiffusionLM
from gdsd_lightning.objectives.base import Objective, ObjectiveConfig, RolloutBatch
from gdsd_lightning.objectives.diffu_grpo import clipped_surrogate
from gdsd_lightning.objectives.scores import coupled_sequence_scores, with_k2_anchor


@dataclass
class ESPOConfig(ObjectiveConfig):
    name: str = "espo"
    num_iterations: int = 8
    advantage: str = "leave_one_out"
    num_mc: int = 2                    # K mask pairs averaged in the ELBO
    eps: float = 0.2                   # sequence-level clip range


def espo_loss(elbo: torch.Tensor, elbo_old: torch.Tensor, advantages: torch.Tensor, eps: float, length: int,
              elbo_ref: torch.Tensor | None = None, beta: float = 0.0, weight: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss on (B,) ELBOs; see the module docstring."""
    rho = ((elbo - elbo_old) / length).exp()
    surrogate, clipped = clipped_surrogate(rho, advantages, eps)
    loss = -(surrogate if weight is None else weight * surrogate).mean()
    metrics = {"clip_binding_fraction": clipped.float().mean(), "ratio": rho.detach().mean()}
    return with_k2_anchor(loss, metrics, elbo, elbo_ref, beta, length), metrics


class ESPO(Objective):
    Config = ESPOConfig
    roles = {"reference": "beta"}         # a KL anchor: the reference, built when beta > 0
    importance_level = "sequence"

    def score(self, model: DiffusionLM, batch: RolloutBatch, iteration: int) -> torch.Tensor:
        """ELBO (B,), the mean of K coupled ELBOs."""
        return coupled_sequence_scores(model, batch, iteration, self.cfg.num_mc, coupled_elbo).mean(dim=1)

    def loss(self, policy, batch: RolloutBatch, iteration: int):
        elbo = self.score(policy, batch, iteration)
        elbo_old, elbo_ref = self.old_and_ref(batch, iteration, elbo)
        return espo_loss(elbo, elbo_old, batch.advantages, self.cfg.eps, self.gen_length, elbo_ref, self.cfg.beta,
                         batch.importance_weight)
