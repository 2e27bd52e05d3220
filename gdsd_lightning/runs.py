"""Run directories: runs/<experiment>/<run>/ with config.yaml, TensorBoard events, checkpoints/,
final/ (the trained model as a save_pretrained directory) and summary.json;
runs/<experiment>/latest points at the newest run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from omegaconf import DictConfig

from gdsd_lightning.config import PROJECT_ROOT
from gdsd_lightning.errors import UserError

FINAL_MODEL = "final"
INTERRUPTED_CHECKPOINT = "interrupted"   # checkpoints/interrupted.ckpt, written on SIGTERM or an error


def runs_root(cfg: DictConfig) -> Path:
    root = Path(cfg.runs_dir)
    return root if root.is_absolute() else Path.cwd() / root


RUN_DIR_ENV = "GDSD_RUN_DIR"   # set by rank 0; processes started by a multi-process launcher inherit it


def create_run_dir(cfg: DictConfig) -> Path:
    """A new run directory (name from `run_name` or a timestamp); `latest` is re-pointed at it.
    Processes that a distributed launcher starts later (ranks > 0) join rank 0's directory."""
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank > 0 and RUN_DIR_ENV in os.environ:
        return Path(os.environ[RUN_DIR_ENV])
    experiment_dir = runs_root(cfg) / cfg.name
    name = cfg.run_name or time.strftime("%Y%m%d-%H%M%S")
    run_dir = experiment_dir / name
    suffix = 1
    while run_dir.exists() and not cfg.resume:
        run_dir, suffix = experiment_dir / f"{name}-{suffix}", suffix + 1
    run_dir.mkdir(parents=True, exist_ok=True)
    point_latest(experiment_dir, run_dir)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    return run_dir


def point_latest(experiment_dir: Path, run_dir: Path) -> None:
    link = experiment_dir / "latest"
    tmp = experiment_dir / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, link)  # atomic: readers never see a missing link


def latest_final_model(runs_dir: str, experiment: str) -> Path | None:
    """runs/<experiment>/latest/final if it exists (also looked up under the project root)."""
    for root in (Path(runs_dir), PROJECT_ROOT / runs_dir):
        candidate = root / experiment / "latest" / FINAL_MODEL
        if candidate.is_dir():
            return candidate
    return None


def require_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} {path} does not exist")
    return path


def write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
