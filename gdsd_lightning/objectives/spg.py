"""SPG: sandwiched policy gradient with block-wise masks, an ELBO for positive advantages and an
EUBO/ELBO mix for the rest.

For D draws d of the `block_random` mask (t_hat_d = masked fraction of the valid tokens; with
`p_mask_prompt` > 0 the prompt and the blocks before the chosen one are masked with that
probability too, as the release's `use_mask_prompt`) and per-token weights w_dl = mask_dl / t_hat_d
on valid tokens:

    ELBO_b = mean over valid l of  mean_d [ w_dl log p_d,l ]
    EUBO_b = mean over valid l masked in some draw of  1/beta_e log mean_d [ w_dl p_d,l^beta_e ]
    score_b = ELBO_b                                 if A_b > 0
            = w EUBO_b + (1 - w) ELBO_b              otherwise (w = `eubo_weight`)
    loss = sum_b ( -w_b A_b score_b len_b ) / sum_b len_b         (len_b = valid tokens)

(per draw, sum_l w_dl log p_dl / len equals the mean log-prob over the masked valid tokens). The
EUBO skips tokens no draw masked (their inner mean is 0). No ratio, clip or KL; group-mean
advantages; w_b: rollout.importance_correction's sequence weight (1 when off). The normaliser
sum_b len_b is the micro-batch's (the release's per-device batch).
The D draws of a row come from one generator per (rollout, mask index, micro-batch), in the
release's order (`block_random_mask`); the mask index of inner iteration i follows
`method.mask_seed_rule` (`scores.mask_iteration`: the release's (i n + m) mod mu of micro-batch m of n).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gdsd_lightning.diffusion.estimators import completion_logprobs
from gdsd_lightning.diffusion.masking import block_random_mask
from gdsd_lightning.errors import UserError
from gdsd_lightning.models.adapter import DiffusionLM
from gdsd_lightning.objectives.base import Objective, RolloutBatch
from gdsd_lightning.objectives.scores import MicroStepSeedConfig, micro_step_generator


@dataclass
class SPGConfig(MicroStepSeedConfig):
    name: str = "spg"
    num_iterations: int = 4
    advantage: str = "group_mean"
    block_length: int = 32             # masking block (recipe 32)
    num_mc: int = 2                    # mask draws per sequence (the release's num_t)
    p_mask_prompt: float = 0.15        # prompt and earlier blocks masked w.p. p (0: the release's use_mask_prompt off)
    beta_eubo: float = 1.5             # recipe 1.5; 1.0 for sudoku
    eubo_weight: float = 0.5           # mix of EUBO and ELBO for non-positive advantages


def spg_bounds(logp: torch.Tensor, weights: torch.Tensor, valid: torch.Tensor, beta_eubo: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ELBO, EUBO) per row from draws-first (D, B, L) log-probs and weights mask / t_hat."""
    valid_f = valid.float()
    elbo = ((weights * logp).mean(dim=0) * valid_f).sum(dim=1) / valid_f.sum(dim=1).clamp(min=1)
    seen = (weights > 0).any(dim=0) & valid
    log_w = torch.where(weights > 0, weights.clamp(min=1e-30).log(), torch.full_like(weights, -1e4))
    log_mean = torch.logsumexp(beta_eubo * logp + log_w, dim=0) - torch.log(torch.tensor(float(logp.shape[0])))
    eubo_tok = torch.where(seen, log_mean / beta_eubo, torch.zeros_like(log_mean))
    eubo = eubo_tok.sum(dim=1) / seen.sum(dim=1).clamp(min=1)
    return elbo, eubo


def spg_loss(elbo: torch.Tensor, eubo: torch.Tensor, advantages: torch.Tensor, lengths: torch.Tensor,
             eubo_weight: float, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """sum_b (-A_b score_b len_b) / sum_b len_b with the sandwich score; see the module docstring."""
    positive = advantages > 0
    score = torch.where(positive, elbo, eubo_weight * eubo + (1 - eubo_weight) * elbo)
    terms = advantages * score * lengths
    loss = -(terms if weight is None else weight * terms).sum() / lengths.sum()
    return loss, {"elbo": elbo.detach().mean(), "eubo": eubo.detach().mean(),
                  "positive_fraction": positive.float().mean()}


class SPG(Objective):
    Config = SPGConfig
    needs_old = False
    importance_level = "sequence"

    def __init__(self, cfg, gen_length: int):
        # checked when the objective is built, not when the experiment loads: overlays that shrink the
        # sampler (_base/cpu_smoke.yaml) load every experiment, including SPG's with 32-token blocks
        super().__init__(cfg, gen_length)
        if gen_length % cfg.block_length or cfg.num_mc > gen_length // cfg.block_length:
            raise UserError(f"method.block_length ({cfg.block_length}) must divide the generation length ({gen_length}) "
                            f"into at least method.num_mc ({cfg.num_mc}) blocks: SPG draws its masks' blocks from one "
                            "permutation of the blocks")

    def loss(self, policy: DiffusionLM, batch: RolloutBatch, iteration: int):
        draws = self.cfg.num_mc
        prompt_masked, mask, t_hat = block_random_mask(
            batch.valid, self.cfg.block_length, draws, batch.prompt_ids.shape[1], self.cfg.p_mask_prompt,
            micro_step_generator(batch, iteration, self.cfg))                                    # (B, D, ...)
        repeat = lambda t: t.repeat_interleave(draws, 0)                                        # noqa: E731
        logp = completion_logprobs(policy, repeat(batch.prompt_ids), repeat(batch.prompt_mask), repeat(batch.completions),
                                   mask.flatten(0, 1), prompt_masked.flatten(0, 1)).view(mask.shape)
        logp, mask, t_hat = logp.transpose(0, 1), mask.transpose(0, 1), t_hat.transpose(0, 1)   # draws first
        weights = (mask & batch.valid).float() / t_hat.clamp(min=1e-12).unsqueeze(-1)
        elbo, eubo = spg_bounds(logp, weights, batch.valid, self.cfg.beta_eubo)
        return spg_loss(elbo, eubo, batch.advantages, batch.valid.sum(dim=1).float(), self.cfg.eubo_weight,
                        batch.importance_weight)
