"""Masked-diffusion SFT (MDLM / LLaDA SFT), used to build the tiny base models.

    t ~ U(eps, 1] per row;  each completion token masked with probability t
    loss = sum_{rows, masked l} w_row * CE(p_theta(. | z)_l, x_l) / #masked,   w = 1/t or 1
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gdsd_lightning.diffusion.estimators import completion_logprobs
from gdsd_lightning.models.adapter import DiffusionLM


@dataclass
class SFTConfig:
    name: str = "sft"
    time_weighting: bool = False       # weight each row's masked CE by 1/t
    eps: float = 1e-3                  # smallest masking probability


def masked_diffusion_loss(model: DiffusionLM, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                          completion: torch.Tensor, generator: torch.Generator, time_weighting: bool = False,
                          eps: float = 1e-3) -> torch.Tensor:
    rows, length = completion.shape
    device = completion.device
    t = eps + (1 - eps) * torch.rand(rows, 1, generator=generator, device=device)
    masked = torch.rand(rows, length, generator=generator, device=device) < t
    logp = completion_logprobs(model, prompt_ids, prompt_mask, completion, masked)
    weight = 1.0 / t if time_weighting else torch.ones_like(t)
    return -(logp * masked * weight).sum() / masked.sum().clamp(min=1)


class SFT:
    """Registry entry: SFT has no rollout, so the CLI trains it with `SFTModule`."""

    Config = SFTConfig

    @staticmethod
    def config_problems(cfg) -> list[str]:
        """What SFT cannot do with the rest of the experiment `cfg` (as Objective.config_problems)."""
        if cfg.rollout.importance_correction in ("tis", "mis"):
            return ["rollout.importance_correction cannot be used with sft: it trains on no rollouts"]
        return []
