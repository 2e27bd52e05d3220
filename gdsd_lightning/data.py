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
from gdsd_lightning.tasks.splits import split_path


def resolve_split(task_cfg: DictConfig, split: str) -> Path:
    """The file of `split`: the explicit `<split>_path`, else `<data_dir>/<task>/<split>.*`
    (a relative data_dir is looked up in the working directory, then in the project root)."""
    explicit = task_cfg.get(f"{split}_path")
    if explicit:
        return Path(explicit)
    path = split_path(task_cfg.data_dir, task_cfg.name, split)
    if not path.exists() and not Path(task_cfg.data_dir).is_absolute():
        path = split_path(PROJECT_ROOT / task_cfg.data_dir, task_cfg.name, split)
    return path


def as_list(examples: list[dict]) -> list[dict]:
    return examples


class ResumableShuffle(Sampler[int]):
    """Index stream in which pass e over the data is permutation(seed, e), started at `start`.

    Being a function of (seed, position) only, a resumed run draws exactly the prompts the
    uninterrupted run would have drawn next.
    """

    def __init__(self, size: int, seed: int, start: int, stop: int):
        self.size, self.seed, self.start, self.stop = size, seed, start, stop

    def __iter__(self):
        permutation, current = None, -1
        for position in range(self.start, self.stop):
            epoch = position // self.size
            if epoch != current:
                permutation = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
                current = epoch
            yield int(permutation[position % self.size])

    def __len__(self) -> int:
        return self.stop - self.start


class PromptDataModule(L.LightningDataModule):
    def __init__(self, cfg: DictConfig, task: Task, train_batch_size: int, steps_per_batch: int = 1):
        super().__init__()
        self.cfg, self.task, self.train_batch_size = cfg, task, train_batch_size
        self.steps_per_batch = steps_per_batch  # optimiser steps per training batch (mu for RL)
        self.train_examples: list[dict] = []
        self.val_examples: list[dict] = []

    def setup(self, stage: str | None = None) -> None:
        if not self.train_examples and stage in (None, "fit"):
            self.train_examples = self.task.load(resolve_split(self.cfg.task, "train"))
        if not self.val_examples:
            self.val_examples = self.task.load(resolve_split(self.cfg.task, "val"))[: self.cfg.task.num_val]

    def train_dataloader(self) -> DataLoader:
        """The batches still to run, from the module's batch count (restored before this is called).

        A batch that produced no optimiser step (a skipped rollout) leaves the stream short; the
        loader is then rebuilt for the next epoch and continues from the batch count.
        """
        done = self.trainer.lightning_module.batches_done if self.trainer else 0
        steps_left = self.cfg.trainer.max_steps - (self.trainer.global_step if self.trainer else 0)
        total = done + -(-steps_left // self.steps_per_batch)
        sampler = ResumableShuffle(len(self.train_examples), self.cfg.seed,
                                   done * self.train_batch_size, total * self.train_batch_size)
        return DataLoader(self.train_examples, batch_size=self.train_batch_size, sampler=sampler,
                          drop_last=True, collate_fn=as_list)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_examples, batch_size=self.cfg.eval.batch_size, collate_fn=as_list)
