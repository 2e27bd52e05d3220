"""DMPO: distribution matching policy optimisation, a weighted denoising cross-entropy towards the
reward-tilted reference p*(x) ~ p_ref(x) exp(r(x) / alpha).

The rollout comes from the old policy; self-normalised importance weights over the G rows of a
prompt (c = `coeff`) point at p* and at its reward-averse twin:

    logRND_i = ELBO_ref(x_i) - ELBO_old(x_i)                        (at rollout time, same masks)
    w+_i = softmax_G( c (logRND_i + r_i / alpha) )_i
    w-_i = softmax_G( c (logRND_i - r_i / alpha) )_i
    ELBO(x) = mean_k sum_{l masked in k} (L / m_k) log p(x_l | z_k)

and every inner iteration draws fresh masks for the weighted denoising cross-entropy

    CE_i = mean_k sum_{l masked in k} -log p_theta(x_l | z_k) / m_k
    loss = sum_i (w+_i - w-_i) CE_i / number of groups            (loss_scale = groups)
    loss = sum_i (w+_i - w-_i) CE_i per micro-batch               (loss_scale = device_batch)

`device_batch` is the release's normaliser (dmpo_trainer.py:182: the sum over a per-device batch, the
replicates averaged), which accumulation and DDP then average over device batches: with
`micro_batch_size` the release's per-device batch it is the release's loss, G / device rows times
smaller than `groups`'s (it matters once gradient-norm clipping binds).

K = `num_replicates` antithetic masks: per pair a rate lambda = 0.1 + 0.9 u, every completion
token masked with probability lambda, and the partner masks exactly the other tokens; m_k = the
masked count (at least 1). All L positions count (the release's loss_mask_non_eos = false). The
weights are fixed at rollout time; there is no ratio, clip or KL term: the reference acts through
logRND. The reference is the fixed base, as in the release (LoRA with the adapters disabled,
dmpo_trainer.py:252); trainer.ref_sync_every_n_steps would refresh it. Rewards enter raw; the group
softmax makes any per-group shift irrelevant.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gdsd_lightning.diffusion.estimators import completion_logprobs
from gdsd_lightning.diffusion.masking import antithetic_masks, generator_for
from gdsd_lightning.models.adapter import DiffusionLM
from gdsd_lightning.objectives.base import Objective, ObjectiveConfig, RolloutBatch


@dataclass
class DMPOConfig(ObjectiveConfig):
    name: str = "dmpo"
    num_iterations: int = 8            # recipe (GSM8K / MATH launch script); d1 uses 12
    alpha: float = 0.04                # temperature of the reward tilt
    coeff: float = 1.0                 # c: scale of the softmax logits (the release's fixed coeff)
    num_replicates: int = 4            # K antithetic masks, for the rollout-time ELBO and the loss
    loss_scale: str = "groups"         # groups: the sum over rows / groups | device_batch: the release's sum
                                       # per micro-batch (= per-device batch)

    def problems(self, cfg=None) -> list[str]:
        problems = super().problems(cfg)
        if self.alpha <= 0 or self.num_replicates < 2 or self.num_replicates % 2:
            problems.append(f"method.alpha must be positive and method.num_replicates even and at least 2 "
                            f"(antithetic pairs); got alpha={self.alpha}, num_replicates={self.num_replicates}")
        if self.loss_scale not in ("groups", "device_batch"):
            problems.append(f"method.loss_scale must be 'groups' or 'device_batch', got {self.loss_scale!r}")
        return problems


def dmpo_weights(rewards: torch.Tensor, log_rnd: torch.Tensor, group_size: int, alpha: float,
                 coeff: float = 1.0) -> torch.Tensor:
    """w+ - w- per row: softmax_G(c (logRND + r/alpha)) - softmax_G(c (logRND - r/alpha))."""
    tilt, rnd = (rewards / alpha).view(-1, group_size), log_rnd.view(-1, group_size)
    return ((coeff * (rnd + tilt)).softmax(dim=1) - (coeff * (rnd - tilt)).softmax(dim=1)).reshape(-1)


def masked_mean_logprobs(logp: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(K, B) sum over masked positions of log p / m_k, from replicate-first (K, B, L) log-probs and masks."""
    return (logp * masks).sum(dim=-1) / masks.sum(dim=-1).clamp(min=1)


def dmpo_loss(masked_logp: torch.Tensor, weights: torch.Tensor, group_size: int, scale: str = "groups") -> torch.Tensor:
    """sum_i w_i CE_i, divided by the number of groups of these rows unless `scale` is device_batch,
    with CE_i = -mean_k masked_logp[k, i]."""
    total = (weights * -masked_logp.mean(dim=0)).sum()
    return total if scale == "device_batch" else total * group_size / weights.shape[0]


class DMPO(Objective):
    Config = DMPOConfig
    needs_old = False                  # the weights are fixed at rollout time, no ratio
    importance_refusal = ("its group softmax already self-normalises importance weights against the rollout "
                          "policy (logRND), so a sampler ratio would belong inside that softmax, not as a capped factor")

    roles = {"reference": ""}          # always: logRND is relative to the reference


    def masked_logprobs(self, model: DiffusionLM, batch: RolloutBatch, iteration: int) -> torch.Tensor:
        """(K, B) per-replicate mean log-prob of the masked tokens, under this iteration's masks."""
        replicates = self.cfg.num_replicates
        gen = generator_for(batch.mask_seed(iteration, 0), batch.completions.device)
        masks = antithetic_masks(replicates, batch.rows, batch.completions.shape[1], gen)     # (K, B, L)
        logp = completion_logprobs(model, batch.prompt_ids.repeat(replicates, 1), batch.prompt_mask.repeat(replicates, 1),
                                   batch.completions.repeat(replicates, 1), masks.flatten(0, 1)).view(masks.shape)
        return masked_mean_logprobs(logp, masks)

    @torch.no_grad()
    def prepare(self, policy, reference, batch: RolloutBatch) -> RolloutBatch:
        """The weights, from ELBOs of the rollout-time policy and the reference on the same masks
        (iteration index num_iterations: masks no inner iteration draws)."""
        length, late = self.gen_length, self.cfg.num_iterations
        elbo = {name: torch.cat([length * self.masked_logprobs(model, micro, late).mean(dim=0)
                                 for micro in batch.split(self.cfg.micro_batch_size)])
                for name, model in (("old", policy), ("ref", reference))}
        log_rnd = elbo["ref"] - elbo["old"]
        batch.extras["weight"] = dmpo_weights(batch.rewards, log_rnd, batch.group_size, self.cfg.alpha, self.cfg.coeff)
        batch.stats.update(log_rnd=float(log_rnd.mean()), log_rnd_std=float(log_rnd.std()) if batch.rows > 1 else 0.0)
        return batch

    def loss(self, policy: DiffusionLM, batch: RolloutBatch, iteration: int):
        masked_logp = self.masked_logprobs(policy, batch, iteration)
        loss = dmpo_loss(masked_logp, batch.extras["weight"], batch.group_size, self.cfg.loss_scale)
        return loss, {"cross_entropy": -masked_logp.detach().mean()}
