"""Task registry: `get_task(name)` returns the task object (prompts, parsers, rewards, metrics)."""

from gdsd_lightning.errors import UserError
from gdsd_lightning.tasks.base import Task
from gdsd_lightning.tasks.code import MBPP, HumanEval
from gdsd_lightning.tasks.countdown import Countdown
from gdsd_lightning.tasks.gsm8k import GSM8K
from gdsd_lightning.tasks.hendrycks_math import MATH
from gdsd_lightning.tasks.sudoku import Sudoku

TASKS: dict[str, type[Task]] = {"sudoku": Sudoku, "countdown": Countdown, "gsm8k": GSM8K, "math": MATH,
                                "humaneval": HumanEval, "mbpp": MBPP}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]()


__all__ = ["Task", "get_task", "TASKS"]
