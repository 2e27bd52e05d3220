"""wd1: ratio-free weighted log-likelihood on one-step mean-field log-probs.

    l_i  = sum over valid tokens of log p_theta(x_l | prompt masked w.p. p, completion fully masked)
    w_i  = softmax_group(A)_i - softmax_group(-A)_i          (softmax over the G rows of a prompt)
    loss = - mean over groups of sum_i v_i w_i l_i

The prompt mask of each inner iteration follows `method.mask_seed_rule` (`scores.mask_iteration`).
No old-policy ratio, no clip, no KL. A group with equal rewards has w = 0 (no signal). v_i:
rollout.importance_correction's sequence weight (1 when off).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gdsd_lightning.models.adapter import DiffusionLM
from gdsd_lightning.objectives.base import Objective, RolloutBatch
from gdsd_lightning.objectives.scores import MeanFieldConfig, mean_field_logprobs


@dataclass
class WD1Config(MeanFieldConfig):
    name: str = "wd1"
    num_iterations: int = 8            # recipe: 12 on GSM8K, 8 on sudoku
    advantage: str = "group_mean"


def wd1_weights(advantages: torch.Tensor, group_size: int) -> torch.Tensor:
    """w_i = softmax(A)_i - softmax(-A)_i within each group of `group_size` consecutive rows."""
    grouped = advantages.view(-1, group_size)
    return (grouped.softmax(dim=1) - (-grouped).softmax(dim=1)).reshape(-1)


def wd1_loss(sequence_logp: torch.Tensor, weights: torch.Tensor, group_size: int) -> torch.Tensor:
    """- sum_i w_i l_i / number of groups in these rows (a per-row mean scaled by G)."""
    return -(weights * sequence_logp).sum() * group_size / sequence_logp.shape[0]


class WD1(Objective):
    Config = WD1Config
    needs_old = False
    importance_level = "sequence"

    @torch.no_grad()
    def prepare(self, policy, reference, batch: RolloutBatch) -> RolloutBatch:
        weights = wd1_weights(batch.advantages, batch.group_size)
        batch.extras["weight"] = weights if batch.importance_weight is None else weights * batch.importance_weight
        return batch

    def loss(self, policy: DiffusionLM, batch: RolloutBatch, iteration: int):
        logp = mean_field_logprobs(policy, batch, iteration, self.cfg)
        sequence_logp = (logp * batch.valid).sum(dim=1)
        loss = wd1_loss(sequence_logp, batch.extras["weight"], batch.group_size)
        return loss, {"sequence_logp": sequence_logp.detach().mean()}
