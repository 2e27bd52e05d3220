"""The Objective interface: the only thing that differs between RL methods.

    objective.prepare(policy, reference, batch)      # once per rollout, no grad: old/ref quantities
    loss, metrics = objective.loss(policy, micro, i)  # per micro-batch and inner iteration i

Most objectives only define `score(model, micro, iteration)` (a per-row or per-token score of the
rollout) and `loss`; the default `prepare` records that score for the old policy (mu > 1) and the
reference (a KL anchor with beta > 0) under every iteration's masks, and `old_and_ref` hands them back.

A rollout batch is split into fixed micro-batches; masks are drawn from generators seeded by
(rollout seed, iteration, Monte-Carlo index, micro-batch index), so `prepare` and `loss` see the
same masks (diffu-GRPO, wd1 and SPG put the mask index of `method.mask_seed_rule` in the
iteration's place: `scores.mask_iteration`). `loss` returns a micro-batch mean; the module weights it by the micro-batch's share
of rows, so the accumulated gradient is that of the whole-batch loss.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import ClassVar, Iterator

import torch
from omegaconf import DictConfig, OmegaConf

from gdsd_lightning.errors import UserError
from gdsd_lightning.models.adapter import DiffusionLM


@dataclass
class RolloutBatch:
    """Everything one rollout produced; row i belongs to group i // group_size."""

    prompt_ids: torch.Tensor      # (N, P) left-padded
    prompt_mask: torch.Tensor     # (N, P) what the scoring forwards attend to (`attend_padding`: `device_batch_attention`)
    completions: torch.Tensor     # (N, L)
    valid: torch.Tensor           # (N, L) True up to and including the first EOS
    rewards: torch.Tensor         # (N,)
    advantages: torch.Tensor      # (N,)
    seed: int                     # base seed of this rollout's masks
    group_size: int               # G: rows per prompt (groups never straddle a rollout batch)
    correct: torch.Tensor | None = None  # (N,) verified correct by the task
    micro: int = 0                # index of this micro-batch within the rollout
    num_micro: int = 1            # micro-batches the rollout is split into (the releases' accumulation steps)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # (N, ...) rows' extra tensors
    stats: dict[str, float] = field(default_factory=dict)           # rollout statistics to log

    @property
    def rows(self) -> int:
        return self.completions.shape[0]

    def select(self, rows: slice | torch.Tensor, micro: int | None = None) -> "RolloutBatch":
        """The same rollout restricted to `rows` (a slice or a boolean mask)."""
        tensors = {f.name: getattr(self, f.name)[rows] for f in fields(self)
                   if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **tensors, micro=self.micro if micro is None else micro,
                       extras={k: v[rows] for k, v in self.extras.items()})

    @property
    def importance_weight(self) -> torch.Tensor | None:
        """rollout.importance_correction's weights (N,) per row or (N, L) per token; None when off."""
        return self.extras.get("importance_weight")

    def split(self, size: int) -> Iterator["RolloutBatch"]:
        """Fixed micro-batches of `size` rows (the last may be smaller), each knowing their number."""
        starts = range(0, self.rows, size)
        for micro, start in enumerate(starts):
            yield replace(self.select(slice(start, start + size), micro), num_micro=len(starts))

    def mask_seed(self, iteration: int, mc: int) -> int:
        """Seed of the masks for (this rollout, inner iteration, Monte-Carlo draw, micro-batch)."""
        return (self.seed * 1_000_003 + iteration * 10_007 + mc * 101 + self.micro) % (2**62)


@dataclass
class ObjectiveConfig:
    """Fields every RL objective has."""

    name: str = "?"
    num_iterations: int = 1            # mu: optimiser steps per rollout batch
    micro_batch_size: int = 32         # rows per forward (gradient accumulation inside a step)
    advantage: str = "group_mean"      # group_mean | leave_one_out
    scale_advantage: bool = False      # divide by the group std + 1e-4
    beta: float = 0.0                  # weight of the KL-to-reference term (0: no reference)
    attend_padding: bool = False       # score with each device batch's prompt padding attended, as GDSD's releases
                                       # (no attention mask; `device_batch_attention`). d1, wd1, SPG and DMPO put one
                                       # prompt in a device batch, so they see no padding: masked is their release
    padding_rows: int = 0              # rows of the release's device batch, padded on its own (0: the rank's rollout)

    def problems(self, cfg: DictConfig | None = None) -> list[str]:
        """One sentence for each value of the `method` section no objective can train with (a
        subclass adds its own fields' rules); the experiment's loader and the objective ask it."""
        problems = []
        if self.num_iterations < 1:
            problems.append(f"method.num_iterations (mu) must be at least 1, got {self.num_iterations}")
        if self.padding_rows < 0:
            problems.append(f"method.padding_rows must be 0 (the rank's whole rollout) or a positive number of rows, "
                            f"got {self.padding_rows}")
        return problems


class Objective(ABC):
    """An RL method: its `Config` (the `method` section), what it needs from the rest of the
    experiment (declared below as data, checked by `config_problems` when the experiment loads) and
    its loss."""

    Config: ClassVar[type] = ObjectiveConfig
    # The frozen roles the module builds for this objective, each with the method key that switches it
    # on when positive or true ("": always). "reference": the frozen initial model (with LoRA: the
    # policy, adapters off).
    roles: ClassVar[dict[str, str]] = {}
    record_states: ClassVar[bool] = False   # rollouts keep every intermediate denoising state
    uses_groups: ClassVar[bool] = True      # advantages are relative to a group of G >= 2
    kl_anchor: ClassVar[bool] = False       # the loss has a KL-to-reference term weighted by method.beta: the
                                            # objective's reference is switched on by beta (make compare tunes it)
    # rollout.importance_correction: which weights the loss's rollout terms take (`importance_weights`),
    # "sequence" (one per row: a sequence-level score) or "token" (per completion token: a per-token
    # loss); None refuses the correction, `importance_refusal` saying why
    importance_level: ClassVar[str | None] = None
    importance_refusal: ClassVar[str] = "its loss has no per-row terms to weight"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.kl_anchor = cls.roles.get("reference") == "beta"

    def __init__(self, cfg: DictConfig, gen_length: int):
        section = cfg if is_dataclass(cfg) else self.Config(**OmegaConf.to_container(cfg))
        problems = section.problems()        # the rules the experiment's loader checked (Config.problems)
        if problems:
            raise UserError("; ".join(problems))
        self.cfg = cfg
        self.gen_length = gen_length

    @classmethod
    def config_problems(cls, cfg: DictConfig) -> list[str]:
        """In one sentence each, what this objective needs of the rest of the experiment `cfg` that it
        does not get (groups, an importance correction it can weight, exact states); its own section
        checks itself (`Config.problems`)."""
        problems = []
        name, rollout = cfg.method.name, cfg.rollout
        if rollout.num_generations < 2 and cls.uses_groups:
            problems.append("rollout.num_generations must be at least 2 (advantages are relative to the group)")
        if rollout.importance_correction in ("tis", "mis") and cls.importance_level is None:
            problems.append(f"rollout.importance_correction cannot be used with {name}: {cls.importance_refusal}")
        if cls.record_states:   # d-OPSD; docs/sampling.md, "Fast rollouts in RL"
            reasons = {"fast_threshold": "the threshold commits more than the L / steps positions it distils per "
                                         "recorded state and ends blocks early, so states and positions disagree",
                       "kv_cache": "the cache would record states drawn by an approximate model, off-policy for the "
                                   "student it distils there"}
            rollouts = lambda key: rollout.sampler.get(key, cfg.sampler[key])   # noqa: E731  (rollout.sampler wins)
            problems += [f"sampler.{key} cannot be used with {name}: {reason}"
                         for key, reason in reasons.items() if rollouts(key) not in (None, False)]
        return problems

    def needs(self, role: str) -> bool:
        """Whether the module must build `role` (declared in `roles`) for this configuration."""
        switch = self.roles.get(role)
        return switch is not None and (switch == "" or getattr(self.cfg, switch) > 0)

    @property
    def needs_reference(self) -> bool:
        """Whether `prepare` records the reference's scores (the KL anchor, when weighted)."""
        return self.needs("reference")

    @property
    def needs_old(self) -> bool:
        """Whether `loss` compares against the rollout-time policy (only meaningful for mu > 1)."""
        return self.cfg.num_iterations > 1

    def score(self, model: DiffusionLM, batch: RolloutBatch, iteration: int) -> torch.Tensor:
        """The score whose old/reference values `prepare` records, (B, ...) for one micro-batch."""
        raise NotImplementedError(f"{type(self).__name__} records nothing at rollout time")

    @torch.no_grad()
    def prepare(self, policy: DiffusionLM, reference: DiffusionLM | None, batch: RolloutBatch) -> RolloutBatch:
        """Record `score` of the old policy and of the reference in `batch.extras` as (N, mu, ...),
        micro-batch by micro-batch so that the masks are the ones `loss` will draw. Returns the
        batch to train on (an objective may drop rows; with none left the module skips the step)."""
        roles = {"old": policy if self.needs_old else None, "ref": reference if self.needs_reference else None}
        for key, model in roles.items():
            if model is not None:
                batch.extras[key] = torch.cat([
                    torch.stack([self.score(model, micro, it) for it in range(self.cfg.num_iterations)], dim=1)
                    for micro in batch.split(self.cfg.micro_batch_size)])
        return batch

    @staticmethod
    def old_and_ref(batch: RolloutBatch, iteration: int, current: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The recorded old and reference scores for this iteration; with mu = 1 old = current, detached."""
        old = batch.extras["old"][:, iteration] if "old" in batch.extras else current.detach()
        ref = batch.extras["ref"][:, iteration] if "ref" in batch.extras else None
        return old, ref

    @abstractmethod
    def loss(self, policy: DiffusionLM, batch: RolloutBatch, iteration: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Micro-batch loss at inner iteration `iteration`, and detached metrics to log."""


def device_batch_attention(prompt_mask: torch.Tensor, rows: int) -> torch.Tensor:
    """The prompt attention of `attend_padding`: the releases tokenise and left-pad each device batch
    on its own and score it with no attention mask. With g(i) = floor(i / rows) the device batch of
    row i (rows = 0: one batch of all N rows) and w_g its longest prompt (real tokens),

        attended[i, j] = 1  if  j >= P - w_g(i)   else 0        (P: the padded width of all N rows)

    so a row attends its own device batch's padding and not the columns only a wider batch has
    (as if the batch were cut to its own width; Dream's position ids restart there too)."""
    lengths = prompt_mask.sum(1)
    rows = rows or lengths.shape[0]
    widths = torch.stack([chunk.max() for chunk in lengths.split(rows)]).repeat_interleave(rows)[: lengths.shape[0]]
    columns = torch.arange(prompt_mask.shape[1], device=prompt_mask.device)
    return (columns >= prompt_mask.shape[1] - widths.unsqueeze(1)).to(prompt_mask.dtype)


def group_advantages(rewards: torch.Tensor, group_size: int, kind: str, scale: bool) -> torch.Tensor:
    """Advantages within each group of `group_size` consecutive rows.

    group_mean:    A_i = r_i - mean_j r_j
    leave_one_out: A_i = r_i - mean_{j != i} r_j
    scale:         A_i / (std_j r_j + 1e-4)
    """
    grouped = rewards.view(-1, group_size)
    if kind == "group_mean":
        adv = grouped - grouped.mean(dim=1, keepdim=True)
    elif kind == "leave_one_out":
        adv = grouped - (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    else:
        raise ValueError(f"unknown advantage {kind!r}; use group_mean or leave_one_out")
    if scale:
        adv = adv / (grouped.std(dim=1, keepdim=True) + 1e-4)
    return adv.reshape(-1)


def importance_weights(log_ratio: torch.Tensor, kind: str, cap: float) -> torch.Tensor:
    """Weights of rollout.importance_correction from log-ratios d = log p_exact - log p_sampler (any
    shape: a row's summed over its L tokens, or a token's) and the cap C (rollout.importance_cap):

        tis  (truncated IS)  w = min(exp(d), C)
        mis  (masked IS)     w = exp(d) if exp(d) <= C, else 0: a row (token) beyond the cap drops out

    computed from d without overflow."""
    if kind == "tis":
        return log_ratio.clamp(max=math.log(cap)).exp()
    if kind == "mis":
        return torch.where(log_ratio <= math.log(cap), log_ratio.clamp(max=math.log(cap)).exp(), 0.0)
    raise ValueError(f"unknown importance correction {kind!r}; use tis or mis")


def zero_loss(model: torch.nn.Module) -> torch.Tensor:
    """0 with a gradient path to every trainable parameter, so that distributed backward hooks fire."""
    return sum((p.sum() * 0.0 for p in model.parameters() if p.requires_grad), torch.zeros((), device=model.device))
