"""Frozen, deterministic train/val/test splits for the generated tasks (`make data`), and the
tiny bases' SFT split of demonstrations (`sft`, for the tasks whose generator makes them).

Test is drawn first, then val, train and sft with the earlier splits excluded, so no two share an
example and regenerating with the same seed reproduces the files byte for byte.
"""

from __future__ import annotations

from pathlib import Path

from gdsd_lightning.tasks import get_task

SPLIT_SIZES = {"test": 256, "val": 128, "train": 20000}
SFT_SPLIT, SFT_SIZE = "sft", 20000     # rows carry the generator's demonstrations (the SFT target)
GENERATED_TASKS = ("sudoku", "countdown")
DEMONSTRATING_TASKS = ("sudoku",)      # the tasks with an sft split


def split_path(data_dir: str | Path, task_name: str, split: str) -> Path:
    return Path(data_dir) / task_name / f"{split}{get_task(task_name).split_suffix}"


def split_sizes(task_name: str) -> dict[str, int]:
    """The splits `make data` writes for `task_name`, in the order they are drawn."""
    return {**SPLIT_SIZES, **({SFT_SPLIT: SFT_SIZE} if task_name in DEMONSTRATING_TASKS else {})}


def write_splits(data_dir: str | Path, task_name: str, seed: int = 1234, sizes: dict | None = None) -> list[Path]:
    task, taken, written = get_task(task_name), set(), []
    for offset, (split, n) in enumerate((sizes or split_sizes(task_name)).items()):
        rows = task.generate(n, seed=seed + offset, exclude=taken, demonstrations=split == SFT_SPLIT)
        taken |= {task.key(r) for r in rows}
        path = split_path(data_dir, task_name, split)
        task.write(path, rows)
        written.append(path)
    return written
