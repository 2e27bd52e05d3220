"""Forward-process masking schemes (../shared/methods.md, "Masking schemes").

Every function draws from the `torch.Generator` it is given, never from the global RNG, so the
policy and the old/reference passes can replay exactly the same masks. Each scheme makes the same
draws, in the same order, as the release that defines it (the GDSD release for `stratified` and
SPG's `block_random`, d1 for `full_completion`): a generator seeded with s gives the masks the
release gives after `torch.manual_seed(s)` on the CPU (docs/fidelity.md, "Masks").
"""

from __future__ import annotations

import torch


def generator_for(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A local generator seeded with `seed` (the only way masks and samples get randomness)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def stratified_mask(rows: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified masking (GDSD, ESPO).

    One k ~ U{0..L} per micro-batch of b rows; row i masks

        n_i = round(k + i (L+1)/b) mod (L+1)

    positions: the j with perm_i[j] < n_i, perm_i a uniform permutation of the L positions drawn
    row by row after k. The levels are the float32 values of linspace(k, k + (b-1)(L+1)/b, b),
    rounded half to even, as the release computes them. Returns (mask (b, L) bool, n (b,) long);
    t_i = n_i / (L+1).
    """
    device = generator.device
    k = torch.randint(0, length + 1, (), generator=generator, device=device)
    levels = torch.linspace(float(k), k + (rows - 1) * ((length + 1) / rows), steps=rows, device=device)
    num_masked = torch.round(levels).long() % (length + 1)
    perms = torch.stack([torch.randperm(length, generator=generator, device=device) for _ in range(rows)])
    return perms < num_masked.unsqueeze(1), num_masked


def complement(mask: torch.Tensor) -> torch.Tensor:
    """The coupled view: masks exactly the positions the first view kept."""
    return ~mask


def full_completion_mask(rows: int, length: int, prompt_len: int, p_mask_prompt: float,
                         generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """diffu-GRPO / wd1: every completion token masked, each prompt position masked with p.

    One uniform draw u per position of the whole (prompt + completion) sequence; prompt position
    j is masked when u_j < p (padding included: it is never attended). Returns (prompt positions
    to mask (b, P) bool, completion mask (b, L) all True).
    """
    noise = torch.rand(rows, prompt_len + length, generator=generator, device=generator.device)
    return noise[:, :prompt_len] < p_mask_prompt, torch.ones(rows, length, dtype=torch.bool, device=generator.device)


def block_random_mask(valid: torch.Tensor, block_length: int, draws: int, prompt_len: int, p_mask_prompt: float,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SPG's block-wise masking, `draws` masks per row.

    With m = the number of blocks holding valid completion tokens (up to the first EOS), row i
    draws one permutation pi of the L/block_length blocks, and its d-th mask picks block
    k_d = pi[d] mod m. In that mask the blocks after k_d are fully masked, block k_d masks
    c ~ U{1..v} of its v valid positions (those o with sigma[o] < c, sigma a permutation of v
    drawn after c), and positions after the first EOS are always masked. With p_mask_prompt > 0
    (the release's `use_mask_prompt`), every prompt position and every position of the blocks
    before k_d is also masked with probability p (one uniform draw per position of the whole
    sequence, prompt padding included); those completion tokens enter the ELBO and t_hat.
    Draw order: the b permutations, then (c, sigma) per row and mask, then the uniforms.

    Returns (prompt positions to mask (b, D, P), completion mask (b, D, L), t_hat (b, D) = the
    masked fraction of the valid tokens, the SPG weight's denominator).
    """
    rows, length = valid.shape
    device = generator.device
    num_blocks = length // block_length
    lengths = valid.sum(1).tolist()
    valid_blocks = [(n - 1) // block_length + 1 for n in lengths]
    chosen = torch.stack([torch.randperm(num_blocks, generator=generator, device=device)[:draws] % m
                          for m in valid_blocks])                                  # (b, D)
    block_of = torch.arange(length, device=device) // block_length
    suffix = block_of.view(1, 1, -1) >= chosen.unsqueeze(-1)                       # blocks k_d.. (b, D, L)
    in_block = torch.zeros(rows, draws, length, dtype=torch.bool, device=device)
    for i, n in enumerate(lengths):
        for d, k in enumerate(chosen[i].tolist()):
            start = k * block_length
            size = min(block_length, n - start)
            count = torch.randint(1, size + 1, (1, 1), generator=generator, device=device)
            order = torch.randperm(size, generator=generator, device=device)
            in_block[i, d, start:start + size] = order < count
    after_eos = ~valid.unsqueeze(1)
    mask = suffix & (in_block | (block_of.view(1, 1, -1) > chosen.unsqueeze(-1))) | after_eos
    prompt_masked = torch.zeros(rows, draws, prompt_len, dtype=torch.bool, device=device)
    if p_mask_prompt > 0:
        extra = torch.rand(rows, draws, prompt_len + length, generator=generator, device=device) < p_mask_prompt
        prompt_masked = extra[..., :prompt_len]
        mask = mask | (extra[..., prompt_len:] & ~suffix)
    valid_d = valid.unsqueeze(1)
    t_hat = (mask & valid_d).sum(-1).float() / valid_d.sum(-1).clamp(min=1).float()
    return prompt_masked, mask, t_hat


def antithetic_masks(replicates: int, rows: int, length: int, generator: torch.Generator,
                     min_rate: float = 0.1) -> torch.Tensor:
    """DMPO's masks, (replicates, rows, length) bool: for each of replicates / 2 pairs a rate
    lambda = min_rate + (1 - min_rate) u per row, each position masked with probability lambda;
    replicate k + replicates / 2 masks exactly the positions replicate k kept."""
    device = generator.device
    rate = min_rate + (1 - min_rate) * torch.rand(replicates // 2, rows, 1, generator=generator, device=device)
    first = torch.rand(replicates // 2, rows, length, generator=generator, device=device) < rate
    return torch.cat([first, ~first])
