"""Frozen, deterministic train/val/test splits for the generated tasks (`make data`).

Test is drawn first, then val and train with the earlier splits excluded, so the three never
share an example and regenerating with the same seed reproduces the files byte for byte.
"""

from __future__ import annotations

from pathlib import Path

from gdsd_lightning.tasks import get_task

SPLIT_SIZES = {"test": 256, "val": 128, "train": 20000}
GENERATED_TASKS = ("sudoku", "countdown")


def split_path(data_dir: str | Path, task_name: str, split: str) -> Path:
    return Path(data_dir) / task_name / f"{split}{get_task(task_name).split_suffix}"


def write_splits(data_dir: str | Path, task_name: str, seed: int = 1234, sizes: dict | None = None) -> list[Path]:
    task, taken, written = get_task(task_name), set(), []
    for offset, (split, n) in enumerate((sizes or SPLIT_SIZES).items()):
        rows = task.generate(n, seed=seed + offset, exclude=taken)
        taken |= {task.key(r) for r in rows}
        path = split_path(data_dir, task_name, split)
        task.write(path, rows)
        written.append(path)
    return written
