"""`python -m gdsd_lightning make-data`: the frozen sudoku / countdown splits, regenerated."""

from __future__ import annotations

from gdsd_lightning.tasks.splits import GENERATED_TASKS, write_splits


def make_data(out: str = "data") -> str:
    """Write every generated task's splits into `out` (deterministic); one line per file written."""
    return "\n".join(f"wrote {path}" for name in GENERATED_TASKS for path in write_splits(out, name))
