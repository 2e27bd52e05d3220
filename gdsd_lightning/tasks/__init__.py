"""Task registry: `get_task(name, prompt_style, release)` returns the task object (prompts,
parsers, rewards, metrics); `task_from_config(cfg.task)` the one an experiment uses, whose `task`
section is `TaskConfig`."""

from gdsd_lightning.errors import UserError
from gdsd_lightning.tasks.base import PROMPT_STYLES, RELEASES, Task, TaskConfig
from gdsd_lightning.tasks.code import MBPP, HumanEval
from gdsd_lightning.tasks.countdown import Countdown
from gdsd_lightning.tasks.gsm8k import GSM8K
from gdsd_lightning.tasks.hendrycks_math import MATH
from gdsd_lightning.tasks.sudoku import Sudoku

TASKS: dict[str, type[Task]] = {"sudoku": Sudoku, "countdown": Countdown, "gsm8k": GSM8K, "math": MATH,
                                "humaneval": HumanEval, "mbpp": MBPP}


def get_task(name: str, prompt_style: str = "chat", release: str = "gdsd") -> Task:
    """The task `name` prompted in `prompt_style` (chat: the release's prompts and rewards exactly)."""
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name](prompt_style, release)


def task_from_config(task_cfg) -> Task:
    """The task of an experiment's `task` section (name, prompt_style, release)."""
    return get_task(task_cfg.name, task_cfg.prompt_style, task_cfg.release)


__all__ = ["Task", "TaskConfig", "get_task", "task_from_config", "TASKS", "PROMPT_STYLES", "RELEASES"]
