"""GDSD: Guided Denoiser Self-Distillation, and its token-logit-centralised variant GDSD-TLC.

The self-teacher pi* ~ pi_old^(1-beta) pi_ref^beta exp(psi A) is never built; its log-ratio to
pi_old is psi A up to a per-prompt constant that group-centred advantages remove. The policy's
denoiser log-ratio is regressed on that target, on the same masks for policy and old policy:

    r    = clamp(D_theta - D_old, log(1 - eps), log(1 + eps))            per (row, mc)
    loss = sum_{row, mc} w_row (r / L - psi A_row)^2 / B
         + beta sum_{row, mc} 1/2 (D_theta - D_ref)^2 / (B K L)          (k2 KL to reference, scores.with_k2_anchor)

D is the coupled denoiser score (`denoiser_score`); GDSD-TLC uses the coupled ELBO instead and
centres each position's logits on their detached vocabulary mean. Masks: `stratified`, one
coupled pair per Monte-Carlo draw (K = num_mc). w_row: rollout.importance_correction's sequence
weight (1 when off; the KL term is not weighted). With mu = 1, D_old = D_theta.detach().
Clamped terms carry no gradient (torch.clamp). `mask_after_eos=False` is the released recipe
(D sums over all L positions, EOS padding included); True restricts D to the valid tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gdsd_lightning.diffusion.estimators import coupled_elbo, denoiser_score
from gdsd_lightning.models.adapter import DiffusionLM
from gdsd_lightning.objectives.base import Objective, ObjectiveConfig, RolloutBatch
from gdsd_lightning.objectives.scores import coupled_sequence_scores, with_k2_anchor


@dataclass
class GDSDConfig(ObjectiveConfig):
    name: str = "gdsd"
    num_iterations: int = 8
    advantage: str = "leave_one_out"
    psi: float = 1.0                   # advantage scale of the self-teacher
    eps: float = 4e-4                  # clamp window on the sequence log-ratio
    beta: float = 0.0                  # k2 KL to the reference (1e-3 GSM8K, 1e-4 MATH)
    num_mc: int = 1                    # K Monte-Carlo mask pairs per sequence
    mask_after_eos: bool = False       # False: recipe behaviour, D over all L positions


def gdsd_loss(d_theta: torch.Tensor, d_old: torch.Tensor, advantages: torch.Tensor, psi: float,
              eps: float, length: int, d_ref: torch.Tensor | None = None, beta: float = 0.0,
              weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GDSD loss on (B, K) scores; see the module docstring for the formula."""
    rows = d_theta.shape[0]
    log_ratio = d_theta - d_old
    clamped = log_ratio.clamp(math.log(1 - eps), math.log(1 + eps))
    terms = (clamped / length - psi * advantages.unsqueeze(1)) ** 2
    regression = (terms if weight is None else weight.unsqueeze(1) * terms).sum() / rows
    metrics = {
        "regression": regression.detach(),
        "clamp_fraction": (clamped != log_ratio).float().mean(),
        "log_ratio": log_ratio.detach().mean(),
    }
    return with_k2_anchor(regression, metrics, d_theta, d_ref, beta, length), metrics


class GDSD(Objective):
    Config = GDSDConfig
    roles = {"reference": "beta"}         # a KL anchor: the reference, built when beta > 0
    importance_level = "sequence"
    center_logits = False
    reduce = staticmethod(denoiser_score)

    def score(self, model: DiffusionLM, batch: RolloutBatch, iteration: int) -> torch.Tensor:
        """D (B, K) of every row under this iteration's K coupled mask pairs."""
        return coupled_sequence_scores(model, batch, iteration, self.cfg.num_mc, self.reduce,
                                       self.center_logits, self.cfg.mask_after_eos)

    def loss(self, policy, batch: RolloutBatch, iteration: int):
        d_theta = self.score(policy, batch, iteration)
        d_old, d_ref = self.old_and_ref(batch, iteration, d_theta)
        return gdsd_loss(d_theta, d_old, batch.advantages, self.cfg.psi, self.cfg.eps,
                         self.gen_length, d_ref, self.cfg.beta, batch.importance_weight)


@dataclass
class GDSDTLCConfig(GDSDConfig):
    name: str = "gdsd_tlc"


class GDSDTLC(GDSD):
    """GDSD-TLC: the coupled ELBO (1/t weights) in place of D, with centred logits."""

    Config = GDSDTLCConfig
    center_logits = True
    reduce = staticmethod(coupled_elbo)
