"""Prompts to completions with the configured sampler, and scoring of completions by the task."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from gdsd_lightning.diffusion.sampler import SampleOutput, SamplerConfig, block_sample, dream_sample
from gdsd_lightning.errors import UserError
from gdsd_lightning.models.adapter import DiffusionLM
from gdsd_lightning.tasks import Task


def prompt_texts(task: Task, examples: list[dict], tokenizer) -> list[str]:
    """Plain prompts, or chat prompts rendered with the tokenizer's chat template (the task's style)."""
    if task.plain:
        return [task.prompt(ex) for ex in examples]
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("task.prompt_style=chat, but the model's tokenizer has no chat template (a model saved "
                        "before the character tokenizer had one?); retrain it or set task.prompt_style=plain")
    return [tokenizer.apply_chat_template(task.chat_messages(ex), tokenize=False, add_generation_prompt=True)
            for ex in examples]


def encode_prompts(policy: DiffusionLM, task: Task, examples: list[dict], task_cfg: DictConfig
                   ) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The prompt texts of `examples` and their left-padded ids and mask, each prompt cut to its
    last `task.max_prompt_length` tokens (the releases cut from the left)."""
    texts = prompt_texts(task, examples, policy.tokenizer)
    ids, mask = policy.encode_prompts(texts, task_cfg.max_prompt_length)
    return texts, ids, mask


def sample(policy: DiffusionLM, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, sampler: SamplerConfig,
           generator: torch.Generator | None = None, record_states: bool = False,
           measure_mismatch: bool = False) -> SampleOutput:
    """Run the sampler `sampler` describes, whole (its kind, schedule and temperature: each caller
    passes one configuration, e.g. the experiment's section at the rollout's temperature);
    `sampler.fast_threshold` and `sampler.kv_cache` are the block sampler's fast mode (confident
    parallel commits, cached keys and values outside the current block), `sampler.gumbel_dtype` its
    noise precision; `measure_mismatch` (block sampler) compares every commit with the exact sampler's."""
    if sampler.kind == "dream":
        return dream_sample(policy, prompt_ids, prompt_mask, sampler.gen_length, sampler.steps, sampler.temperature,
                            sampler.top_p, sampler.eps, generator, record_states)
    return block_sample(policy, prompt_ids, prompt_mask, sampler.gen_length, sampler.block_length, sampler.steps,
                        sampler.temperature, sampler.remasking, generator, record_states, sampler.fast_threshold,
                        sampler.kv_cache, sampler.kv_refresh_every, sampler.gumbel_dtype, measure_mismatch)


def score(task: Task, completions: list[str], examples: list[dict]) -> list[dict]:
    """Per-completion records: reward, accuracy, correctness and the task's extra metrics."""
    return [{"completion": c, **task.score(c, ex)} for c, ex in zip(completions, examples)]


@torch.no_grad()
def generate_and_score(policy: DiffusionLM, task: Task, examples: list[dict], cfg: DictConfig) -> list[dict]:
    """Greedy completions (the experiment's sampler at temperature 0: periodic evaluation) for
    `examples`, scored by the task."""
    prompts, ids, mask = encode_prompts(policy, task, examples, cfg.task)
    greedy = SamplerConfig.of(cfg.sampler).at(temperature=0.0)
    out = sample(policy, ids.to(policy.device), mask.to(policy.device), greedy)
    records = score(task, policy.decode(out.completions), examples)
    return [{"prompt": p, **r} for p, r in zip(prompts, records)]
