"""Sequence scores built from the denoiser (../shared/methods.md, "Sequence scores").

All take per-position log-probabilities `log p_theta(x_l | z)_l` of the clean completion tokens
and reduce them; `completion_logprobs` computes those with one forward of the adapter.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from gdsd_lightning.models.adapter import DiffusionLM

LOGIT_BUDGET = 2**25   # float32 vocabulary logits alive at once in `token_logprobs` (128 MiB)


def token_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                   center_logits: bool = False) -> torch.Tensor:
    """log softmax(head(hidden))[target] per position, (B, k) float32, as logit[target] - logsumexp.

    The vocabulary logits are built in chunks of positions holding at most LOGIT_BUDGET floats;
    with several chunks each is recomputed in backward (activation checkpointing), so at most one
    chunk of (B, chunk, V) logits is ever alive instead of the whole (B, k, V) tensor.
    """
    rows, positions, vocab = hidden.shape[0], hidden.shape[1], head.weight.shape[0]
    chunk = max(1, LOGIT_BUDGET // max(1, rows * vocab))

    def piece(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = head(h).float()
        if center_logits:
            logits = logits - logits.mean(dim=-1, keepdim=True).detach()
        return logits.gather(-1, t.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)

    if chunk >= positions:
        return piece(hidden, targets)
    recompute = torch.is_grad_enabled()
    return torch.cat([checkpoint(piece, h, t, use_reentrant=False) if recompute else piece(h, t)
                      for h, t in zip(hidden.split(chunk, 1), targets.split(chunk, 1))], dim=1)


def with_prompt(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completions: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Model inputs (B, P + L) and attention mask for completions (B, L) after their prompts (B, P)."""
    return (torch.cat([prompt_ids, completions], 1),
            torch.cat([prompt_mask, torch.ones_like(completions, dtype=prompt_mask.dtype)], 1))


def completion_logprobs(model: DiffusionLM, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                        completion: torch.Tensor, masked: torch.Tensor,
                        prompt_masked: torch.Tensor | None = None, center_logits: bool = False) -> torch.Tensor:
    """log p_theta(x_l | z)_l for every completion position l, shape (B, L), float32.

    z is the completion with `masked` positions replaced by the mask token (and prompt positions
    in `prompt_masked`, if given). `center_logits` subtracts the detached vocabulary mean of each
    position's logits before the log-softmax (GDSD-TLC; a no-op in exact arithmetic). The LM head
    runs only at the completion positions, in chunks (`token_logprobs`).
    """
    prompt_len = prompt_ids.shape[1]
    noisy = torch.where(masked, model.mask_id, completion)
    prompt = prompt_ids if prompt_masked is None else torch.where(prompt_masked, model.mask_id, prompt_ids)
    inputs, attention = with_prompt(prompt, prompt_mask, noisy)
    positions = (prompt_len + torch.arange(completion.shape[1], device=completion.device)).expand_as(completion)
    return token_logprobs(model.head, model.hidden_at(inputs, attention, positions), completion, center_logits)


def coupled_logprobs(model: DiffusionLM, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                     completion: torch.Tensor, masked: torch.Tensor, center_logits: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs under the view z (`masked`) and its complement z_bar (`~masked`), one forward."""
    both = completion_logprobs(
        model, prompt_ids.repeat(2, 1), prompt_mask.repeat(2, 1), completion.repeat(2, 1),
        torch.cat([masked, ~masked]), center_logits=center_logits,
    )
    return both.chunk(2)


def denoiser_score(logp_view: torch.Tensor, logp_complement: torch.Tensor, masked: torch.Tensor,
                   valid: torch.Tensor | None = None) -> torch.Tensor:
    """GDSD's denoiser score, shape (B,):

        D = 1/2 [ sum_{l masked in z} log p(x_l | z)_l + sum_{l kept in z} log p(x_l | z_bar)_l ]

    With the coupled pair every completion token is predicted exactly once. `valid` (optional)
    drops positions from both sums (e.g. after EOS).
    """
    keep = torch.ones_like(masked) if valid is None else valid
    terms = torch.where(masked, logp_view, logp_complement) * keep
    return 0.5 * terms.sum(dim=1)


def coupled_elbo(logp_view: torch.Tensor, logp_complement: torch.Tensor, masked: torch.Tensor,
                 valid: torch.Tensor | None = None) -> torch.Tensor:
    """Coupled ELBO (ESPO, GDSD-TLC), shape (B,):

        ELBO = 1/2 [ sum_{l masked in z} log p(x_l | z)_l / t + sum_{l kept} log p(x_l | z_bar)_l / t_bar ]

    with n = |masked|, t = n/(L+1) and t_bar = (L-n)/(L+1), the masked fraction of the complement
    view. With n ~ U{0..L} both views are unbiased for the any-order log-likelihood, so the
    expectation of this estimator is log p(x) for a model with consistent conditionals.
    """
    length = masked.shape[1]
    n = masked.sum(dim=1, keepdim=True).float()
    t = (n / (length + 1)).clamp(min=1e-12)
    t_bar = ((length - n) / (length + 1)).clamp(min=1e-12)
    keep = torch.ones_like(masked) if valid is None else valid
    terms = torch.where(masked, logp_view / t, logp_complement / t_bar) * keep
    return 0.5 * terms.sum(dim=1)


def valid_completion_mask(completion: torch.Tensor, eos_id: int) -> torch.Tensor:
    """True up to and including the first EOS of each row (all True when there is none)."""
    is_eos = completion == eos_id
    before_or_at_first = is_eos.long().cumsum(dim=1) - is_eos.long() == 0
    return before_or_at_first
