"""LightningModules: the shared evaluation/optimiser base, masked-diffusion SFT, and the RL loop.

One RL training step = one rollout batch:

    prompts -> G samples each (block sampler) -> task rewards -> group advantages
            -> objective.prepare (old / reference scores, same mask seeds)
            -> mu x { micro-batch losses -> manual_backward -> clip -> optimiser step }

Nothing here is method-specific: the objective declares the roles it needs (`Objective.roles`: a
frozen reference, e.g. for a KL anchor when method.beta > 0) and supplies the loss. The `rollout`
and `optim` sections are this module's (RolloutConfig, OptimConfig).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import ClassVar

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics import MeanMetric

from gdsd_lightning.config import merge_checked
from gdsd_lightning.diffusion.estimators import valid_completion_mask
from gdsd_lightning.diffusion.masking import generator_for
from gdsd_lightning.diffusion.sampler import SamplerConfig
from gdsd_lightning.errors import TrainingStopped, UserError
from gdsd_lightning.generation import encode_prompts, generate_and_score, sample, score
from gdsd_lightning.models.adapter import DiffusionLM
from gdsd_lightning.models.lora import frozen_reference
from gdsd_lightning.objectives import OBJECTIVES
from gdsd_lightning.objectives.base import (RolloutBatch, device_batch_attention, group_advantages, importance_weights,
                                           zero_loss)
from gdsd_lightning.objectives.sft import masked_diffusion_loss
from gdsd_lightning.tasks import Task


@dataclass
class RolloutConfig:
    """The `rollout` section: how the RL loop samples and scores its rollouts."""

    prompts_per_step: int = 8              # prompts per rollout batch (per rank)
    num_generations: int = 8               # G completions per prompt
    temperature: float = 1.0               # sampling temperature during training rollouts (replaces sampler.temperature)
    passk: int = 1                         # attempts per row (d-OPSD's pass@k)
    passk_keep: str = "first_correct"      # first_correct: stop at a correct attempt, else keep the last |
                                           # best_reward: run all attempts, keep the best (ties: the later)
    mismatch_every: int = 1                # with sampler.kv_cache or fast_threshold: measure the rollout's
                                           # mismatch to the exact sampler every n rollouts (0: never; one
                                           # uncached forward more per cached step; docs/sampling.md)
    importance_correction: str = "none"    # none | tis | mis: weight each row (token) by the exact-to-sampler
                                           # probability ratio (objectives/base.py, importance_weights)
    importance_cap: float = 2.0            # C of the correction: tis caps the ratio at C, mis zeroes above C
    sampler: dict = field(default_factory=dict)   # fast-mode keys of `sampler` for the rollouts only (e.g.
                                           # {kv_cache: true, fast_threshold: 0.9}: fast rollouts, exact evaluation)
    dropout: bool = False                  # sample in train mode, dropout active (the releases generate inside
                                           # their training step); False: eval mode
    decode: str = "first_eos"              # the text the reward reads: first_eos (cut at the first EOS) | all (all
                                           # L tokens, special tokens dropped: the releases) | special (all, kept: d-OPSD)

    IMPORTANCE_CORRECTIONS: ClassVar[tuple[str, ...]] = ("none", "tis", "mis")

    def problems(self, cfg: DictConfig) -> list[str]:
        """One sentence for each rollout.* setting that cannot run (with the rollouts' sampler,
        `rollout_sampler`); the objective adds what it needs of the rollout (Objective.config_problems)."""
        try:
            problems, sampler = [], rollout_sampler(cfg)
        except UserError as err:           # a key rollout.sampler may not set, or a wrong type
            problems, sampler = [str(err)], None
        if self.sampler and sampler is not None:
            problems += [f"with rollout.sampler: {problem}" for problem in sampler.problems()]
        if self.passk < 1:
            problems.append(f"rollout.passk must be at least 1, got {self.passk}")
        if self.decode not in ("first_eos", "all", "special"):
            problems.append(f"rollout.decode must be 'first_eos', 'all' or 'special', got {self.decode!r}")
        if self.passk_keep not in ("first_correct", "best_reward"):
            problems.append(f"rollout.passk_keep must be 'first_correct' or 'best_reward', got {self.passk_keep!r}")
        if self.mismatch_every < 0:
            problems.append(f"rollout.mismatch_every must be 0 (never) or a positive number of rollouts, "
                            f"got {self.mismatch_every}")
        if self.importance_correction not in self.IMPORTANCE_CORRECTIONS:
            problems.append(f"rollout.importance_correction must be one of {', '.join(self.IMPORTANCE_CORRECTIONS)}, "
                            f"got {self.importance_correction!r}")
        elif self.importance_correction != "none":
            if self.importance_cap <= 0:
                problems.append(f"rollout.importance_cap must be positive, got {self.importance_cap}")
            if sampler is not None and not sampler.kv_cache:
                problems.append("rollout.importance_correction needs sampler.kv_cache=true (or rollout.sampler.kv_cache): "
                                "without the cache every forward is exact and every weight would be 1")
        return problems


ROLLOUT_SAMPLER_KEYS = ("fast_threshold", "kv_cache", "kv_refresh_every")   # what rollout.sampler may set


def rollout_sampler(cfg: DictConfig) -> SamplerConfig:
    """The sampler the rollouts draw with, whole: `sampler` with `rollout.sampler` merged over it (only
    the fast-mode keys: what is sampled and scored stays the same shape as what is evaluated), at
    `rollout.temperature`."""
    other = [key for key in cfg.rollout.sampler if key not in ROLLOUT_SAMPLER_KEYS]
    if other:
        raise UserError(f"rollout.sampler.{other[0]}: only the fast-mode keys {', '.join(ROLLOUT_SAMPLER_KEYS)} may "
                        "differ between rollouts and evaluation")
    merged = merge_checked(OmegaConf.structured(SamplerConfig.of(cfg.sampler)), cfg.rollout.sampler,
                           where="rollout.sampler", prefix="rollout.sampler.")
    return OmegaConf.to_object(merged).at(temperature=cfg.rollout.temperature)


@dataclass
class OptimConfig:
    """The `optim` section: AdamW and its learning-rate schedule (DiffusionModule.configure_optimizers)."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    warmup_steps: int = 0
    scheduler: str = "constant"            # constant | cosine
    grad_clip: float = 1.0

    def problems(self, cfg: DictConfig) -> list[str]:
        if self.scheduler not in ("constant", "cosine"):
            return [f"optim.scheduler must be 'constant' or 'cosine', got {self.scheduler!r}"]
        return []


class DiffusionModule(L.LightningModule):
    """Holds the policy; evaluates it greedily on the val split; builds AdamW + schedule."""

    def __init__(self, cfg: DictConfig, policy: DiffusionLM, task: Task):
        super().__init__()
        self.cfg, self.task = cfg, task
        self.policy = policy.train()  # from_pretrained returns eval mode; Lightning keeps modes as found
        self.val_means = nn.ModuleDict({k: MeanMetric() for k in task.metric_names})
        self.val_samples: list[dict] = []

    def validation_step(self, examples: list[dict], batch_idx: int) -> None:
        was_training = self.policy.training
        self.policy.eval()
        records = generate_and_score(self.policy, self.task, examples, self.cfg)
        self.policy.train(was_training)
        for key, metric in self.val_means.items():
            metric.update(torch.tensor([r[key] for r in records], dtype=torch.float32, device=self.device))
            self.log(f"val/{key}", metric, on_step=False, on_epoch=True, batch_size=len(records))
        if batch_idx == 0:
            self.val_samples = records[:4]

    @property
    def batches_done(self) -> int:
        """Training batches consumed so far: where a resumed prompt stream starts."""
        return self.global_step

    def frozen_copies(self) -> list[DiffusionLM]:
        """Networks besides the policy that live on the device (the RL module's frozen reference)."""
        return []

    def configure_model(self) -> None:
        """FSDP2 (trainer.strategy=fsdp, Lightning's ModelParallelStrategy): every decoder layer,
        then the whole network, is sharded over the data-parallel mesh; the same for a frozen
        reference copy (with LoRA there is none: the reference is the policy, adapters off)."""
        if self.cfg.trainer.strategy != "fsdp" or getattr(self, "_sharded", False):
            return
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for network in [self.policy, *self.frozen_copies()]:
            layers = [name + "." for name, m in network.named_modules() if type(m).__name__ in network.decoder_layer_classes]
            for name, module in network.named_modules():
                inside_layer = any(name.startswith(prefix) for prefix in layers)
                # decoder layers, and apart from them every module holding weights (embeddings, final
                # norm, LM head): the lean passes call those directly, outside the root's forward
                if name + "." in layers or (not inside_layer and next(module.parameters(recurse=False), None) is not None):
                    fully_shard(module, mesh=mesh)
            fully_shard(network, mesh=mesh)
        self._sharded = True

    def save_policy(self, directory) -> None:
        """The policy as a save_pretrained directory, written by rank 0; sharded weights are
        gathered into one full state dict first (every rank takes part)."""
        state_dict = None
        if self.cfg.trainer.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            full = get_model_state_dict(self.policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            state_dict = {k.removeprefix("model."): v for k, v in full.items()}
        if self.trainer.is_global_zero:
            self.policy.save(directory, state_dict)

    def model_signature(self) -> dict:
        """What a checkpoint's weights must match: family, vocabulary and parameter shapes."""
        return {"family": self.policy.family.name, "vocabulary": len(self.policy.tokenizer),
                "parameters": {k: list(v.shape) for k, v in self.policy.state_dict().items()}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["model_signature"] = self.model_signature()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse, in one sentence, a checkpoint of another family, vocabulary or model size."""
        saved, current = checkpoint.get("model_signature"), self.model_signature()
        if saved is not None and saved != current:
            what = [k for k in ("family", "vocabulary") if saved[k] != current[k]] or ["parameter shapes"]
            raise UserError(f"the checkpoint's model does not match experiment {self.cfg.name!r} ({', '.join(what)}: "
                            f"checkpoint {saved['family']} with {saved['vocabulary']} tokens, experiment "
                            f"{current['family']} with {current['vocabulary']} tokens); resume it with its own experiment")

    def configure_optimizers(self):
        """AdamW with the schedule of transformers' constant/cosine "_with_warmup" (the releases'):
        lr factor step / warmup during the warm-up (the first step at 0), then 1, or for `cosine`
        0.5 (1 + cos(pi (step - warmup) / (total - warmup)))."""
        o = self.cfg.optim
        params = [p for p in self.policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        total, warmup = self.cfg.trainer.max_steps, o.warmup_steps

        def factor(step: int) -> float:
            if step < warmup:
                return step / warmup
            if o.scheduler == "cosine":
                return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
            return 1.0

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class SFTModule(DiffusionModule):
    """Masked-diffusion SFT on the task's reference completions (builds the tiny bases)."""

    def training_step(self, examples: list[dict], batch_idx: int) -> torch.Tensor:
        _, prompt_ids, prompt_mask = encode_prompts(self.policy, self.task, examples, self.cfg.task)
        completion = self.policy.encode_completions([self.task.target(ex) for ex in examples],
                                                    self.cfg.sampler.gen_length)
        generator = generator_for(self.cfg.seed * 1_000_003 + self.global_step, self.device)
        loss = masked_diffusion_loss(self.policy, prompt_ids.to(self.device), prompt_mask.to(self.device),
                                     completion.to(self.device), generator, self.cfg.method.time_weighting,
                                     self.cfg.method.eps)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(examples))
        return loss


@dataclass
class RolloutLog:
    """What the callbacks see of the latest rollout."""

    prompts: list[str]
    completions: list[str]
    rewards: torch.Tensor
    advantages: torch.Tensor
    lengths: torch.Tensor
    entropy: torch.Tensor
    group_size: int
    metrics: dict[str, torch.Tensor]   # the task's extra metrics per completion (code: integrity/<check>)
    seconds: float = 0.0               # wall time of the sampling (all attempts, mismatch measurement included)
    mismatch: dict[str, float] = field(default_factory=dict)   # `mismatch_stats` (+ weights), measured rollouts


class DiffusionRLModule(DiffusionModule):
    """The RL loop with manual optimisation; the objective supplies everything method-specific."""

    def __init__(self, cfg: DictConfig, policy: DiffusionLM, task: Task):
        super().__init__(cfg, policy, task)
        self.automatic_optimization = False
        self.objective = OBJECTIVES[cfg.method.name](cfg.method, cfg.sampler.gen_length)
        self.rollout_sampler = rollout_sampler(cfg)   # `sampler` with the rollouts' fast-mode keys, temperature
        # The frozen roles the objective declares (Objective.roles), each the frozen initial model (with LoRA:
        # the policy with adapters off, no copy); outside the registered module tree: not trained, not checkpointed.
        self.roles: dict[str, DiffusionLM] = {role: frozen_reference(policy) for role in self.objective.roles
                                              if self.objective.needs(role)}
        self.last_rollout: RolloutLog | None = None
        self.rollouts_done = 0        # rollout batches drawn, including skipped ones (checkpointed)
        self.empty_rollouts = Streak(cfg.trainer.max_skipped_in_a_row)   # nothing left to train on
        self.bad_steps = Streak(cfg.trainer.max_bad_steps_in_a_row)      # non-finite loss or gradient

    @property
    def reference(self) -> DiffusionLM | None:
        return self.roles.get("reference")

    def frozen_copies(self) -> list[DiffusionLM]:
        return [role for role in self.roles.values() if isinstance(role, nn.Module)]

    @property
    def batches_done(self) -> int:
        return self.rollouts_done

    def on_fit_start(self) -> None:
        for name, role in self.roles.items():
            self.roles[name] = role.to(self.device)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["rollouts"] = {"done": self.rollouts_done, "empty": vars(self.empty_rollouts).copy(),
                                  "bad_steps": vars(self.bad_steps).copy()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.rollouts_done = checkpoint["rollouts"]["done"]
        vars(self.empty_rollouts).update(checkpoint["rollouts"]["empty"])
        vars(self.bad_steps).update(checkpoint["rollouts"]["bad_steps"])

    def rollout_seed(self) -> int:
        """Seed of the current rollout: a function of (experiment seed, rollout index, rank) only."""
        return (self.cfg.seed * 1_000_003 + self.rollouts_done) * 1_009 + self.global_rank

    @torch.no_grad()
    def rollout(self, examples: list[dict]) -> RolloutBatch:
        """G completions per prompt, scored, with group advantages.

        With `rollout.passk` > 1 each row is sampled up to passk times, as the d-OPSD release does:
        `passk_keep=first_correct` samples a row again until an attempt is verified correct and keeps
        that one, else its last attempt; `best_reward` runs every attempt and keeps the best-rewarded,
        ties going to the later one (the release's sudoku rule). Objectives with `record_states` also
        get every intermediate state (N, steps, L). With `rollout.dropout` the policy samples in train
        mode (LoRA dropout active), as the releases generate inside their training step; else in eval mode.

        Fast mode (`sampler.kv_cache` or `fast_threshold`; for the rollouts alone `rollout.sampler`)
        measures the mismatch to the exact sampler (`measures_mismatch`); with `rollout.importance_correction` the batch carries its weights,
        per row from the summed log-ratio or per token (`Objective.importance_level`).
        """
        group = self.cfg.rollout.num_generations
        repeated = [ex for ex in examples for _ in range(group)]
        prompts, prompt_ids, prompt_mask = encode_prompts(self.policy, self.task, repeated, self.cfg.task)
        prompt_ids, prompt_mask = prompt_ids.to(self.device), prompt_mask.to(self.device)
        seed = self.rollout_seed()
        generator = generator_for(seed, self.device)
        started = time.perf_counter()
        with self.policy.sampling(self.cfg.rollout.dropout):
            kept = self.attempts(prompt_ids, prompt_mask, repeated, generator)
        seconds = time.perf_counter() - started
        mismatch = mismatch_stats(kept["log_ratio"], kept["reranked"]) if "log_ratio" in kept else {}
        advantages = group_advantages(kept["rewards"], group, self.objective.cfg.advantage,
                                      self.objective.cfg.scale_advantage) if group > 1 else torch.zeros_like(kept["rewards"])
        valid = valid_completion_mask(kept["completions"], self.policy.eos_id)
        self.last_rollout = RolloutLog(prompts, kept["texts"], kept["rewards"], advantages,
                                       (kept["completions"] != self.policy.eos_id).cumprod(1).sum(1).float(),
                                       kept["entropy"], group,
                                       dict(zip(self.task.extra_metric_names, kept["metrics"].unbind(1))),
                                       seconds, mismatch)
        if self.objective.cfg.attend_padding:   # the releases' scoring forwards take no attention mask
            prompt_mask = device_batch_attention(prompt_mask, self.objective.cfg.padding_rows)
        batch = RolloutBatch(prompt_ids, prompt_mask, kept["completions"], valid, kept["rewards"], advantages,
                             seed, group, correct=kept["correct"])
        if self.objective.record_states:
            batch.extras.update(states=kept["states"], state_blocks=kept["state_blocks"])
        correction = self.cfg.rollout.importance_correction
        if correction != "none":
            per_token = self.objective.importance_level == "token"
            log_ratio = kept["log_ratio"] if per_token else kept["log_ratio"].sum(1)
            batch.extras["importance_weight"] = importance_weights(log_ratio, correction, self.cfg.rollout.importance_cap)
            mismatch.update(weight_mean=float(batch.importance_weight.mean()),
                            capped_fraction=float((log_ratio > math.log(self.cfg.rollout.importance_cap)).float().mean()))
        return batch

    def measures_mismatch(self) -> bool:
        """Whether this rollout compares the fast sampler with the exact one: in fast mode, every
        rollout with an importance correction, else every `rollout.mismatch_every`-th (0: none)."""
        r = self.cfg.rollout
        return self.rollout_sampler.fast and (r.importance_correction != "none" or (r.mismatch_every > 0
                                                              and self.rollouts_done % r.mismatch_every == 0))

    def attempts(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, examples: list[dict],
                 generator: torch.Generator) -> dict:
        """Every row's kept attempt under `rollout.passk` and `rollout.passk_keep`."""
        rows = torch.arange(len(examples), device=self.device)
        kept = self.attempt(prompt_ids, prompt_mask, examples, rows, generator)
        best_reward = self.cfg.rollout.passk_keep == "best_reward"
        for _ in range(self.cfg.rollout.passk - 1):
            pending = rows if best_reward else rows[~kept["correct"]]
            if len(pending) == 0:
                break
            new = self.attempt(prompt_ids, prompt_mask, examples, pending, generator)
            replace = new["rewards"] >= kept["rewards"][pending] if best_reward else torch.ones_like(new["correct"])
            kept = merge_attempt(kept, new, pending, replace)
        return kept

    def attempt(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, examples: list[dict],
                rows: torch.Tensor, generator: torch.Generator) -> dict:
        """One sampling pass over `rows`: completions, texts, rewards, correctness, entropy and,
        for objectives that want them, the intermediate states (rows, steps, L) and their blocks; when
        measured, each token's log-ratio to the exact sampler and whether it reranked (rows, L)."""
        out = sample(self.policy, prompt_ids[rows], prompt_mask[rows], self.rollout_sampler, generator,
                     record_states=self.objective.record_states, measure_mismatch=self.measures_mismatch())
        texts = self.policy.decode(out.completions, self.cfg.rollout.decode)
        records = score(self.task, texts, [examples[i] for i in rows.tolist()])
        attempt = {
            "completions": out.completions, "texts": texts, "entropy": out.entropy,
            "rewards": torch.tensor([r["reward"] for r in records], device=self.device),
            "correct": torch.tensor([r["correct"] for r in records], dtype=torch.bool, device=self.device),
            "metrics": torch.tensor([[float(r[name]) for name in self.task.extra_metric_names] for r in records],
                                    device=self.device).reshape(len(records), len(self.task.extra_metric_names)),
        }
        if out.log_ratio is not None:
            attempt.update(log_ratio=out.log_ratio, reranked=out.reranked)
        if self.objective.record_states:
            attempt["states"] = torch.stack(out.states, dim=1)
            attempt["state_blocks"] = torch.tensor(out.state_blocks, device=self.device).expand(len(rows), -1)
        return attempt

    def training_step(self, examples: list[dict], batch_idx: int) -> None:
        batch = self.rollout(examples)
        self.rollouts_done += 1
        budget = self.cfg.trainer.max_rollouts
        if budget is not None and self.rollouts_done >= budget:
            self.trainer.should_stop = True    # the rollout budget is spent (this one still trains)
        drawn = batch.rows
        batch = self.objective.prepare(self.policy, self.reference, batch)
        self.log_dict({f"train/{k}": v for k, v in self.global_means(batch.stats, drawn).items()}, batch_size=1)
        # Ranks step together or not at all (DDP/FSDP synchronise every backward): skip only when no
        # rank has rows left; a rank without rows then contributes a zero gradient.
        rows_everywhere = int(self.trainer.strategy.reduce(torch.tensor(float(batch.rows), device=self.device),
                                                           reduce_op="sum"))
        if rows_everywhere == 0:   # e.g. d-OPSD with method.skip_gated: no optimiser step on an empty loss
            return self.skip(self.empty_rollouts, "skipped_rollouts", lambda: (
                f"rollouts in a row left nothing to train on, up to optimiser step {self.global_step} "
                f"({self.cfg.method.name}: {batch.stats}); the policy never passes the objective's gate. Raise "
                "rollout.passk, lower the gate or start from a stronger base (limit: trainer.max_skipped_in_a_row)"))
        self.empty_rollouts.reset()
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        params = [p for p in self.policy.parameters() if p.requires_grad]
        for iteration in range(self.cfg.method.num_iterations):
            optimizer.zero_grad()
            totals: dict[str, torch.Tensor] = {}
            for micro in batch.split(self.cfg.method.micro_batch_size):
                loss, metrics = self.objective.loss(self.policy, micro, iteration)
                weight = micro.rows / batch.rows
                self.manual_backward(loss * weight)
                for key, value in {"loss": loss.detach(), **metrics}.items():
                    totals[key] = totals.get(key, 0.0) + value * weight
            if batch.rows == 0:
                self.manual_backward(zero_loss(self.policy))
            totals["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip)
            bad = [key for key, value in totals.items() if not torch.isfinite(torch.as_tensor(value)).all()]
            if bad:   # skip the step: a NaN/inf must not reach the weights or Adam's moments
                optimizer.zero_grad()
                self.skip(self.bad_steps, "skipped_bad_steps", lambda: (
                    f"non-finite {', '.join(bad)} in optimiser steps in a row, the last at step {self.global_step} "
                    f"(rollout {self.rollouts_done}, inner iteration {iteration}, {self.cfg.method.name}); "
                    "lower optim.lr or check the objective's terms (limit: trainer.max_bad_steps_in_a_row)"))
                continue
            self.bad_steps.reset()
            optimizer.step()
            scheduler.step()
        self.log_dict({f"train/{k}": v for k, v in self.global_means(totals, batch.rows).items()}, batch_size=1)
        self.log("train/lr", scheduler.get_last_lr()[0], batch_size=1)

    def skip(self, streak: "Streak", tag: str, message) -> None:
        """One more skipped rollout or optimiser step in `streak` (TrainingStopped at its limit, with
        `message()`), the total logged as train/<tag>."""
        streak.hit(message)
        self.log(f"train/{tag}", float(streak.total), batch_size=1)

    def global_means(self, metrics: dict, weight: float) -> dict[str, float]:
        """Means over ranks, weighted by `weight` (this rank's rows), of metrics whose keys may differ
        between ranks (a rank left without rows has no loss terms). One collective call per use, made
        by every rank, so ranks never wait on different reductions."""
        local = {key: float(value) for key, value in metrics.items()}
        if self.trainer.world_size == 1:
            return local
        gathered: list = [None] * self.trainer.world_size
        torch.distributed.all_gather_object(gathered, (float(weight), local))
        keys = dict.fromkeys(key for _, values in gathered for key in values)
        return {key: sum(w * values[key] for w, values in gathered if key in values)
                / max(sum(w for w, values in gathered if key in values), 1e-12) for key in keys}


@dataclass
class Streak:
    """Counts skipped events overall and in a row; `hit` raises TrainingStopped (its message prefixed
    by the count) when the row reaches `limit`."""

    limit: int
    total: int = 0
    in_a_row: int = 0

    def hit(self, message) -> None:
        self.total += 1
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            raise TrainingStopped(f"{self.in_a_row} {message()}")

    def reset(self) -> None:
        self.in_a_row = 0


def mismatch_stats(log_ratio: torch.Tensor, reranked: torch.Tensor) -> dict[str, float]:
    """A rollout's mismatch from per-token (N, L) log-ratios d = log p_exact - log p_sampler and
    reranked flags (every position is committed once): mean and max |d| over the tokens, the
    fraction reranked, and the mean over rows of the sequence log-ratio sum_l d_l."""
    return {"mean_abs_log_ratio": float(log_ratio.abs().mean()), "max_abs_log_ratio": float(log_ratio.abs().max()),
            "reranked_fraction": float(reranked.float().mean()), "sequence_log_ratio": float(log_ratio.sum(1).mean())}


def merge_attempt(kept: dict, attempt: dict, rows: torch.Tensor, replace: torch.Tensor) -> dict:
    """The kept attempts with those of `rows` replaced by the new `attempt` where `replace` (per row of
    `rows`) holds."""
    chosen = rows[replace]
    merged = dict(kept)
    for key, value in attempt.items():
        if key == "texts":
            merged["texts"] = list(kept["texts"])
            for row, text in zip(chosen.tolist(), [t for t, r in zip(value, replace.tolist()) if r]):
                merged["texts"][row] = text
        else:
            merged[key] = kept[key].clone()
            merged[key][chosen] = value[replace]
    return merged
