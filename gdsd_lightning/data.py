"""The LightningDataModule of prompts: task examples (dicts) in, lists of examples out.

Tokenisation happens in the LightningModule (rollouts need the policy's tokenizer and prompt
style), so batches stay readable and one data module serves SFT, RL and evaluation alike.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Sampler

from gdsd_lightning.config import PROJECT_ROOT
from gdsd_lightning.tasks import Task
from gdsd_lightning.tasks.splits import GENERATED_TASKS, split_path


def load_split(task: Task, task_cfg: DictConfig, split: str) -> tuple[list[dict], str]:
    """The examples of `split` and a name for them. Sources, first match: the explicit
    `<split>_path`; the generated `<data_dir>/<task>/<split>.*` when `data_dir` is set (for
    "train": `task.train_split`; a relative data_dir is looked up in the working directory, then
    in the project root); the task's published data set (`task.hub`: the hub, or a file of a
    release)."""
    explicit = task_cfg.get(f"{split}_path")
    if explicit:
        return task.load(explicit), Path(explicit).stem
    if task_cfg.data_dir is not None:
        name = task_cfg.train_split if split == "train" else split
        path = split_path(task_cfg.data_dir, task_cfg.name, name)
        if not path.exists() and not Path(task_cfg.data_dir).is_absolute():
            path = split_path(PROJECT_ROOT / task_cfg.data_dir, task_cfg.name, name)
        if path.exists() or task.name in GENERATED_TASKS:
            return task.load(path), path.stem
    return task.load_hub(split), split


def as_list(examples: list[dict]) -> list[dict]:
    return examples


class ResumableShuffle(Sampler[int]):
    """The indices of batches start..stop-1 of one rank, from a global stream in which pass e over
    the data is permutation(seed, e): rank r of w takes batch b from stream positions
    (b w + r) B .. (b w + r + 1) B - 1 (B = batch size).

    Being a function of (seed, batch, rank) only, a resumed run draws exactly the prompts the
    uninterrupted run would have drawn next, and ranks never draw the same stream position.
    """

    def __init__(self, size: int, seed: int, batch_size: int, start: int, stop: int, rank: int = 0, world_size: int = 1):
        self.size, self.seed, self.batch_size = size, seed, batch_size
        self.start, self.stop, self.rank, self.world_size = start, stop, rank, world_size

    def __iter__(self):
        permutation, current = None, -1
        for batch in range(self.start, self.stop):
            first = (batch * self.world_size + self.rank) * self.batch_size
            for position in range(first, first + self.batch_size):
                epoch = position // self.size
                if epoch != current:
                    permutation = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
                    current = epoch
                yield int(permutation[position % self.size])

    def __len__(self) -> int:
        return (self.stop - self.start) * self.batch_size


class PromptDataModule(L.LightningDataModule):
    def __init__(self, cfg: DictConfig, task: Task, train_batch_size: int, steps_per_batch: int = 1):
        super().__init__()
        self.cfg, self.task, self.train_batch_size = cfg, task, train_batch_size
        self.steps_per_batch = steps_per_batch  # optimiser steps per training batch (mu for RL)
        self.train_examples: list[dict] = []
        self.val_examples: list[dict] = []

    def setup(self, stage: str | None = None) -> None:
        if not self.train_examples and stage in (None, "fit"):
            self.train_examples, _ = load_split(self.task, self.cfg.task, "train")
        if not self.val_examples:
            self.val_examples = load_split(self.task, self.cfg.task, "val")[0][: self.cfg.task.num_val]

    def train_dataloader(self) -> DataLoader:
        """The batches still to run, from the module's batch count (restored before this is called).

        A batch that produced no optimiser step (a skipped rollout) leaves the stream short; the
        loader is then rebuilt for the next epoch and continues from the batch count. Each rank
        reads its own share (the trainer runs with use_distributed_sampler=False).
        """
        trainer = self.trainer
        done = trainer.lightning_module.batches_done if trainer else 0
        steps_left = self.cfg.trainer.max_steps - (trainer.global_step if trainer else 0)
        total = done + -(-steps_left // self.steps_per_batch)
        sampler = ResumableShuffle(len(self.train_examples), self.cfg.seed, self.train_batch_size, done, total,
                                   trainer.global_rank if trainer else 0, trainer.world_size if trainer else 1)
        return DataLoader(self.train_examples, batch_size=self.train_batch_size, sampler=sampler,
                          drop_last=True, collate_fn=as_list)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_examples, batch_size=self.cfg.eval.batch_size, collate_fn=as_list)
