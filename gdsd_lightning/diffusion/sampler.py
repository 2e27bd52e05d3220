"""Diffusion samplers (../shared/methods.md, "Samplers"), vectorised over the batch.

`block_sample`: LLaDA's semi-autoregressive low-confidence sampler. `dream_sample`: Dream's
whole-sequence entropy sampler. Both start from the prompt followed by L mask tokens, commit a
scheduled number of tokens per step, and can record every intermediate state (d-OPSD).
`SamplerConfig` is the `sampler` section of an experiment and the rules its settings obey; one
configuration is passed whole to `generation.sample` (rollouts: the section at rollout.temperature).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Optional

import torch

from gdsd_lightning.diffusion.estimators import with_prompt
from gdsd_lightning.models.adapter import DiffusionLM


@dataclass
class SamplerConfig:
    """The `sampler` section: which sampler, its schedule and its fast mode (docs/sampling.md)."""

    kind: str = "block"                    # block (LLaDA) | dream
    gen_length: int = 16
    block_length: int = 16
    steps: int = 8
    temperature: float = 0.0
    remasking: str = "low_confidence"      # low_confidence | random
    top_p: float = 0.95                    # dream sampler only
    eps: float = 1e-3                      # dream sampler only
    fast_threshold: Optional[float] = None # fast mode (block sampler): also commit every proposal above this
                                           # confidence each step; None: the exact schedule only (default)
    kv_cache: Any = False                  # fast mode (block sampler): true / dual: within a block, run only the
                                           # block's tokens against cached keys/values of the rest; prefix: run the
                                           # block and its suffix against the cached prefix (Fast-dLLM's; approximate)
    kv_refresh_every: Optional[int] = None # with kv_cache: also rebuild the cache every n steps of a block
                                           # (fresher keys, fewer cached steps); None: once per block
    gumbel_dtype: str = "float64"          # block sampler's Gumbel noise: float64 | model (the upstream
                                           # trainers: the logits' dtype, bf16 for the real models)

    @classmethod
    def of(cls, section) -> "SamplerConfig":
        """The settings of a `sampler` section (a config node, a mapping, or already a SamplerConfig)."""
        if isinstance(section, cls):
            return section
        return cls(**{f.name: section[f.name] for f in fields(cls) if f.name in section})

    def at(self, **changes) -> "SamplerConfig":
        """The same settings with `changes` (e.g. the rollout's temperature, an evaluation's length)."""
        return replace(self, **changes)

    def problems(self, cfg=None) -> list[str]:
        """One sentence for each setting the samplers cannot run, naming its sampler.* key (the
        experiment's section, an evaluation length's, lm-eval's model_args)."""
        problems = []
        if self.kind not in ("block", "dream"):
            problems.append(f"sampler.kind must be 'block' or 'dream', got {self.kind!r}")
        if self.gumbel_dtype not in ("float64", "model"):
            problems.append(f"sampler.gumbel_dtype must be 'float64' or 'model', got {self.gumbel_dtype!r}")
        if self.block_length < 1 or self.gen_length % self.block_length:
            problems.append(f"sampler.block_length ({self.block_length}) must divide sampler.gen_length "
                            f"({self.gen_length})")
        elif self.steps % (self.gen_length // self.block_length):
            problems.append(f"sampler.steps ({self.steps}) must be a multiple of the number of blocks "
                            f"({self.gen_length // self.block_length})")
        if self.steps < 1 or self.steps > self.gen_length:
            problems.append(f"sampler.steps must be in 1..gen_length ({self.gen_length}), got {self.steps}")
        if self.remasking not in ("low_confidence", "random"):
            problems.append(f"sampler.remasking must be 'low_confidence' or 'random', got {self.remasking!r}")
        if self.kv_cache not in (False, True, "dual", "prefix"):
            problems.append(f"sampler.kv_cache must be false, true (dual), 'dual' or 'prefix', got {self.kv_cache!r}")
        if self.fast_threshold is not None and not (0.0 < self.fast_threshold <= 1.0):
            problems.append(f"sampler.fast_threshold must be in (0, 1], got {self.fast_threshold}")
        fast = [f"sampler.{key}" for key in ("fast_threshold", "kv_cache") if getattr(self, key) not in (None, False)]
        if fast and self.kind != "block":
            problems.append(f"{' and '.join(fast)}: fast mode exists for the block sampler only, not "
                            f"sampler.kind={self.kind}")
        if self.fast_threshold is not None and self.remasking != "low_confidence":
            problems.append("sampler.fast_threshold ranks by confidence: it needs sampler.remasking=low_confidence")
        if self.kv_refresh_every is not None and (not self.kv_cache or self.kv_refresh_every < 1):
            problems.append(f"sampler.kv_refresh_every must be a positive number of steps and needs "
                            f"sampler.kv_cache=true, got {self.kv_refresh_every} with kv_cache={self.kv_cache}")
        return problems

    @property
    def fast(self) -> bool:
        """Whether this is the block sampler's fast mode (the KV cache or the threshold)."""
        return self.kind == "block" and (bool(self.kv_cache) or self.fast_threshold is not None)


@dataclass
class SampleOutput:
    completions: torch.Tensor                              # (B, L) generated tokens
    entropy: torch.Tensor | None = None                    # (B,) mean entropy where tokens were committed
    states: list[torch.Tensor] = field(default_factory=list)  # (B, L) completion before each step
    state_blocks: list[int] = field(default_factory=list)     # block index of each recorded state
    forwards: int = 0                                      # model forwards spent
    log_ratio: torch.Tensor | None = None                  # (B, L) log p_exact - log p_sampler per token
    reranked: torch.Tensor | None = None                   # (B, L) committed where the exact sampler would not


def split_evenly(counts: torch.Tensor, steps: int) -> torch.Tensor:
    """(B,) counts -> (B, steps) per-step counts, remainder to the earliest steps."""
    base = counts.unsqueeze(1) // steps
    remainder = counts.unsqueeze(1) % steps
    return base + (torch.arange(steps, device=counts.device).unsqueeze(0) < remainder).long()


def top_k_mask(scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Bool mask of the k[i] highest scores of row i (ties broken by position), no Python loop."""
    order = scores.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return ranks < k.unsqueeze(1)


def start_sequence(model: DiffusionLM, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                   gen_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt followed by `gen_length` mask tokens, and the matching attention mask."""
    masks = torch.full((prompt_ids.shape[0], gen_length), model.mask_id, dtype=torch.long, device=prompt_ids.device)
    return with_prompt(prompt_ids, prompt_mask, masks)


def proposal_logits(model: DiffusionLM, x: torch.Tensor, attention: torch.Tensor,
                    positions: torch.Tensor | None = None) -> torch.Tensor:
    """Float32 denoiser logits (at `positions` (B, k) only, when given) with the mask token itself
    excluded from the proposals."""
    return without_mask(model, model(x, attention) if positions is None else model.logits_at(x, attention, positions))


def without_mask(model: DiffusionLM, logits: torch.Tensor) -> torch.Tensor:
    """Float32 copy of `logits` in which the mask token is never proposed."""
    logits = logits.float()
    logits[..., model.mask_id] = -torch.inf
    return logits


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) along the vocabulary (logits may hold -inf)."""
    log_probs = logits.log_softmax(-1)
    return -(log_probs.exp() * log_probs.nan_to_num(neginf=0.0)).sum(-1)


def gumbel_argmax(logits: torch.Tensor, temperature: float, generator: torch.Generator | None,
                  uniform: torch.Tensor | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Sample argmax(logits / tau + g), g = -log(-log u) Gumbel noise from uniforms u; plain argmax at
    tau = 0. `uniform`: the draws behind the noise, if not drawn here from `generator`.

    `dtype` float64 (the default) draws u and adds the noise in float64. In a 16-bit type the noise
    is coarse and truncated (bf16 u has 8 mantissa bits: g <= -log(-log(1 - 2^-9)), about 6.2), so
    rare tokens are never drawn and near-equal proposals tie: the effective temperature is lower
    (arXiv:2409.02908; the upstream trainers' own comment says float64, yet they pass the model's
    dtype). Any other `dtype` reproduces those trainers: argmax(exp(logits) / (-log u)^tau), all of
    it in `dtype` (the same argmax in exact arithmetic).
    """
    if temperature <= 0:
        return logits.argmax(dim=-1)
    if uniform is None:
        uniform = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=dtype)
    if dtype != torch.float64:
        return (logits.to(dtype).exp() / (-torch.log(uniform.to(dtype))) ** temperature).argmax(dim=-1)
    gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-300)))
    return (logits.double() / temperature + gumbel).argmax(dim=-1)


def uniform_at(slots: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator | None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform draws of `shape` (B, n, ...) kept at the columns `slots` (B, k) of dimension 1: a
    column gets the same draws whichever other columns are kept."""
    draws = torch.rand(shape, generator=generator, device=slots.device, dtype=dtype)
    return torch.take_along_dim(draws, slots.reshape(*slots.shape, *[1] * (len(shape) - 2)), dim=1)


def proposal_confidence(logits: torch.Tensor, proposal: torch.Tensor, gumbel_dtype: str,
                        raw_dtype: torch.dtype) -> torch.Tensor:
    """Float32 softmax probability of `proposal` under `logits`, computed in float32 (`gumbel_dtype`
    float64) or in the model's `raw_dtype` (`model`: the reference's arithmetic, so near-ties rank
    the same way)."""
    scored = logits if gumbel_dtype == "float64" else logits.to(raw_dtype)
    return scored.softmax(-1).gather(-1, proposal.unsqueeze(-1)).squeeze(-1).float()


def step_mismatch(used: torch.Tensor, exact: torch.Tensor, proposal: torch.Tensor, commit: torch.Tensor,
                  confidence: torch.Tensor, count: torch.Tensor, temperature: float, uniform: torch.Tensor | None,
                  noise_dtype: torch.dtype, remasking: str, gumbel_dtype: str, raw_dtype: torch.dtype
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One step's mismatch between the sampler and the exact sampler at the same state, per slot (B, k):

        log_ratio = log softmax(exact / tau)[x0] - log softmax(used / tau)[x0]     (tau = 1 at tau = 0)
        reranked  = commit and not (x0_exact == x0 and exact_commit)

    `used`/`exact`: the logits the sampler drew from and those of a full uncached forward (B, k, V);
    x0 = `proposal`, `commit` the sampler's commits, `confidence` its (masked) confidences, `count`
    (B,) the exact schedule's commits this step. The exact sampler draws x0_exact with the same
    uniforms and commits the `count` most confident open slots (for `low_confidence`, confidences
    from `exact` as `proposal_confidence` computes them; for `random`, the sampler's own draws).
    With the threshold alone `used` is `exact`: log_ratio is 0 and reranked marks the commits
    beyond the schedule. Slots not committed count 0 and False."""
    tau = temperature if temperature > 0 else 1.0
    logp = lambda logits: (logits / tau).log_softmax(-1).gather(-1, proposal.unsqueeze(-1)).squeeze(-1)  # noqa: E731
    exact_proposal = gumbel_argmax(exact, temperature, None, uniform, noise_dtype)
    if remasking == "low_confidence":
        confidence = torch.where(confidence > -torch.inf,
                                 proposal_confidence(exact, exact_proposal, gumbel_dtype, raw_dtype), confidence)
    exact_commit = top_k_mask(confidence, count) & (exact_proposal == proposal)
    return torch.where(commit, logp(exact) - logp(used), 0.0), commit & ~exact_commit


@torch.no_grad()
def block_sample(model: DiffusionLM, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, gen_length: int,
                 block_length: int, steps: int, temperature: float = 0.0, remasking: str = "low_confidence",
                 generator: torch.Generator | None = None, record_states: bool = False,
                 threshold: float | None = None, kv_cache: bool | str = False,
                 kv_refresh_every: int | None = None, gumbel_dtype: str = "float64",
                 measure_mismatch: bool = False) -> SampleOutput:
    """LLaDA block sampler; settings that SamplerConfig.problems refuses raise a ValueError.

    The L completion masks form L/block_length blocks, decoded left to right with
    steps/num_blocks steps each. Per step: x0 = Gumbel-max sample at temperature tau (argmax at
    0; `gumbel_dtype`: the noise in float64, or `model`: in the logits' own dtype with the upstream
    trainers' arithmetic, the confidence below too, see `gumbel_argmax`); confidence = softmax
    probability of x0 (`low_confidence`) or uniform noise (`random`);
    the most confident still-masked positions of the current block are committed, as many as the
    block's masked count split evenly over its steps (remainder to the earliest steps). Only the
    block's still-masked positions get logits (padded to the row with most of them); the random
    draws are made for the whole block, so a seed samples the same tokens however many positions
    are computed.

    Fast mode (`threshold` set, low_confidence only): every other masked position of the block
    whose proposal has probability above `threshold` is committed too, and a block that holds no
    mask any more ends early, so it takes at most the exact schedule's forwards (with threshold 1,
    exactly those). Not exact otherwise.

    KV cache (`kv_cache`, families that support it): the first step of a block runs the whole
    sequence and caches the keys and values of every position outside the block; the block's
    later steps run only the block's tokens against that cache (DiffusionLM.window_logits). The
    first step of each block is exact; the later ones see the prefix and the masked suffix as they
    were when the block began. `kv_refresh_every` = n rebuilds the cache at every n-th step of a
    block as well (steps 0, n, 2n, ... are exact), trading speed for fresher keys.
    `kv_cache="prefix"` (Fast-dLLM's prefix cache, `generate_with_prefix_cache`): only the positions
    before the block are cached; the later steps run the block and everything after it against them.
    `True` (or "dual") is the dual cache above.

    `measure_mismatch`: `log_ratio` and `reranked` (B, L) hold, at each committed token, the
    log-ratio of its probability under an exact forward at the same state to the one it was drawn
    with, and whether the exact sampler would not have committed it there (`step_mismatch`); with
    the cache, a cached step costs one uncached forward more (not counted in `forwards`).
    """
    problems = SamplerConfig("block", gen_length, block_length, steps, temperature, remasking, fast_threshold=threshold,
                             kv_cache=kv_cache, kv_refresh_every=kv_refresh_every, gumbel_dtype=gumbel_dtype).problems()
    if problems:
        raise ValueError("; ".join(problems))
    prompt_len, device = prompt_ids.shape[1], prompt_ids.device
    x, attention = start_sequence(model, prompt_ids, prompt_mask, gen_length)
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    out = SampleOutput(completions=x[:, prompt_len:])
    if measure_mismatch:
        out.log_ratio, out.reranked = torch.zeros(x.shape[0], gen_length, device=device), \
            torch.zeros(x.shape[0], gen_length, dtype=torch.long, device=device)
    entropy_sum = torch.zeros(x.shape[0], device=device)
    block_shape = (x.shape[0], block_length)
    for block in range(num_blocks):
        start, end = prompt_len + block * block_length, prompt_len + (block + 1) * block_length
        schedule = split_evenly((x[:, start:end] == model.mask_id).sum(1), steps_per_block)
        for step in range(steps_per_block):
            current = x[:, start:end]
            masked = current == model.mask_id
            if threshold is not None and not masked.any():
                break
            if record_states:
                out.states.append(x[:, prompt_len:].clone())
                out.state_blocks.append(block)
            # the block's masked columns first, in order; as many columns as the row with most masks
            slots = masked.byte().argsort(dim=1, descending=True, stable=True)[:, :int(masked.sum(1).max())]
            open_slots = masked.gather(1, slots)
            if kv_cache:
                refresh = step % (kv_refresh_every or steps_per_block) == 0
                window_end = x.shape[1] if kv_cache == "prefix" else end
                raw, cache = model.window_logits(x, attention, start, window_end, start + slots, None if refresh else cache)
            else:
                raw = model.logits_at(x, attention, start + slots)
            logits = without_mask(model, raw)                              # (B, slots, V) float32
            noise_dtype = torch.float64 if gumbel_dtype == "float64" else raw.dtype
            out.forwards += 1
            uniform = None if temperature <= 0 else uniform_at(slots, (*block_shape, logits.shape[-1]), generator,
                                                               noise_dtype)
            proposal = gumbel_argmax(logits, temperature, generator, uniform, noise_dtype)
            if remasking == "low_confidence":
                confidence = proposal_confidence(logits, proposal, gumbel_dtype, raw.dtype)
            else:                               # random (SamplerConfig.problems refuses any other)
                confidence = uniform_at(slots, block_shape, generator)
            confidence = torch.where(open_slots, confidence, torch.full_like(confidence, -torch.inf))
            commit = top_k_mask(confidence, schedule[:, step])
            if threshold is not None:           # the schedule may ask for more masks than are left
                commit = (commit | (confidence > threshold)) & open_slots
            if measure_mismatch:                # an uncached forward where the cache served this step
                exact = logits if not kv_cache or refresh else proposal_logits(model, x, attention, start + slots)
                ratio, reranked = step_mismatch(logits, exact, proposal, commit, confidence, schedule[:, step],
                                                temperature, uniform, noise_dtype, remasking, gumbel_dtype, raw.dtype)
                out.log_ratio.scatter_add_(1, start - prompt_len + slots, ratio)
                out.reranked.scatter_add_(1, start - prompt_len + slots, reranked.long())
            entropy_sum.index_add_(0, commit.nonzero()[:, 0], entropy(logits[commit]))   # committed positions only
            x[:, start:end] = current.scatter(1, slots, torch.where(commit, proposal, current.gather(1, slots)))
    out.completions = x[:, prompt_len:]
    out.entropy = entropy_sum / gen_length
    if measure_mismatch:
        out.reranked = out.reranked.bool()
    return out


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Dream's nucleus: over the tokens sorted by probability, drop every token whose preceding
    cumulative probability exceeds top_p (so at least the top token stays), set to -inf."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    preceding = torch.cat([torch.zeros_like(cumulative[..., :1]), cumulative[..., :-1]], dim=-1)
    drop = torch.zeros_like(preceding, dtype=torch.bool).scatter(-1, order, preceding > top_p)
    return logits.masked_fill(drop, -torch.inf)


def neg_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Dream's entropy confidence: sum_v p_v log(p_v + 1e-10), p = softmax(logits) (logits may hold -inf)."""
    probs = logits.softmax(-1)
    return (probs * torch.log(probs + 1e-10)).sum(-1)


@torch.no_grad()
def dream_sample(model: DiffusionLM, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, gen_length: int,
                 steps: int, temperature: float = 0.0, top_p: float = 0.95, eps: float = 1e-3,
                 generator: torch.Generator | None = None, record_states: bool = False) -> SampleOutput:
    """Dream sampler: whole sequence, entropy confidence.

    Timesteps t_0..t_S = linspace(1, eps, S+1); at step i (t = t_i, s = t_{i+1}) each row commits
    int(n_mask (1 - s/t)) of its masked positions (all remaining at the last step). With tau > 0
    the distribution is Dream's: softmax of logits / tau restricted to its top-p nucleus, sampled by
    float64 Gumbel-max (Dream draws from torch.distributions.Categorical: same distribution, other
    draws); tau = 0 takes the argmax of the raw logits, and the nucleus still filters them (Dream's
    `sample_tokens` applies top_p whatever the temperature). The committed positions are those of
    highest confidence sum_v p_v log(p_v + 1e-10) over that same (tempered, filtered) distribution.
    Dream counts n_mask as the batch mean; every row starts from L masks and commits the same
    number each step, so the per-row count used here is that mean at every step.
    """
    prompt_len = prompt_ids.shape[1]
    x, attention = start_sequence(model, prompt_ids, prompt_mask, gen_length)
    timesteps = torch.linspace(1, eps, steps + 1)
    out = SampleOutput(completions=x[:, prompt_len:])
    entropy_sum = torch.zeros(x.shape[0], device=x.device)
    for i in range(steps):
        if record_states:
            out.states.append(x[:, prompt_len:].clone())
            out.state_blocks.append(0)
        logits = proposal_logits(model, x, attention)
        logits = top_p_filter(logits / temperature if temperature > 0 else logits, top_p)   # greedy too
        proposal = gumbel_argmax(logits, 1.0 if temperature > 0 else 0.0, generator)
        confidence = neg_entropy(logits)
        masked = x == model.mask_id
        n_mask = masked.sum(1)
        if i < steps - 1:
            k = (n_mask.float() * (1 - timesteps[i + 1] / timesteps[i])).long()
        else:
            k = n_mask
        commit = top_k_mask(torch.where(masked, confidence, torch.full_like(confidence, -torch.inf)), k)
        entropy_sum -= (confidence * commit).sum(1)
        x = torch.where(commit, proposal, x)
    out.completions = x[:, prompt_len:]
    out.entropy = entropy_sum / gen_length
    return out
