"""Forward-process masking schemes (../shared/methods.md, "Masking schemes").

Every function draws from the `torch.Generator` it is given, never from the global RNG, so the
policy and the old/reference passes can replay exactly the same masks.
"""

from __future__ import annotations

import torch


def generator_for(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A local generator seeded with `seed` (the only way masks and samples get randomness)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def mask_lowest_ranks(num_masked: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """Bool (b, length) mask with exactly `num_masked[i]` uniformly chosen positions in row i."""
    scores = torch.rand(num_masked.shape[0], length, generator=generator, device=generator.device)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return ranks < num_masked.to(ranks.device).unsqueeze(1)


def stratified_mask(rows: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified masking (GDSD, ESPO).

    One k ~ U{0..L} per micro-batch; row i masks n_i = round(k + i (L+1)/b) mod (L+1) uniformly
    chosen positions. Returns (mask (b, L) bool, n (b,) long); t_i = n_i / (L+1).
    """
    k = torch.randint(0, length + 1, (1,), generator=generator, device=generator.device)
    offsets = torch.floor(torch.arange(rows, device=generator.device) * (length + 1) / rows + 0.5).long()
    num_masked = (k + offsets) % (length + 1)
    return mask_lowest_ranks(num_masked, length, generator), num_masked


def complement(mask: torch.Tensor) -> torch.Tensor:
    """The coupled view: masks exactly the positions the first view kept."""
    return ~mask


def full_completion_mask(rows: int, length: int, prompt_mask: torch.Tensor, p_mask_prompt: float,
                         generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """diffu-GRPO / wd1: every completion token masked, each real prompt token masked with p.

    Returns (prompt positions to mask (b, P) bool, completion mask (b, L) all True).
    """
    noise = torch.rand(prompt_mask.shape, generator=generator, device=generator.device)
    prompt_masked = (noise < p_mask_prompt) & prompt_mask.bool().to(noise.device)
    return prompt_masked, torch.ones(rows, length, dtype=torch.bool, device=generator.device)


def block_random_mask(valid: torch.Tensor, block_length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """SPG's block-wise masking.

    For each row pick a block k among the blocks holding valid completion tokens; blocks after k
    are fully masked, blocks before k clean, and block k masks a uniform count in 1..|block| of
    its valid positions. Positions after EOS (`valid` False) are always masked. Returns (mask (b, L),
    t_hat (b,) = masked fraction of the valid tokens, the SPG weight's denominator).
    """
    rows, length = valid.shape
    device = generator.device
    blocks = torch.arange(length, device=device) // block_length          # block index per position
    num_valid_blocks = ((valid.sum(1) + block_length - 1) // block_length).clamp(min=1)
    k = (torch.rand(rows, generator=generator, device=device) * num_valid_blocks).long()
    in_block = (blocks.unsqueeze(0) == k.unsqueeze(1)) & valid
    count = (torch.rand(rows, generator=generator, device=device) * in_block.sum(1)).long() + 1
    scores = torch.rand(rows, length, generator=generator, device=device)
    scores = torch.where(in_block, scores, torch.full_like(scores, 2.0))  # valid in-block positions rank first
    chosen = scores.argsort(dim=1).argsort(dim=1) < count.unsqueeze(1)
    mask = (blocks.unsqueeze(0) > k.unsqueeze(1)) | (in_block & chosen) | ~valid
    t_hat = (mask & valid).sum(1).float() / valid.sum(1).clamp(min=1).float()
    return mask, t_hat
