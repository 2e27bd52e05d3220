"""Which model an evaluation reads: the checkpoint rule (eval.checkpoint) over a run's models, and
loading one of them (a saved model directory, a Lightning .ckpt of the experiment, or the
experiment's starting model).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from gdsd_lightning.errors import UserError
from gdsd_lightning.models.adapter import DiffusionLM
from gdsd_lightning.models.build import build_policy
from gdsd_lightning.runs import FINAL_MODEL, INTERRUPTED_CHECKPOINT, latest_final_model, require_file


@dataclass(frozen=True)
class ModelRef:
    label: str                    # final | best.ckpt | step120.ckpt | start (step 0) | the given path
    source: Path | None           # None: the experiment's starting model (build_policy)


def trained_model(cfg: DictConfig) -> Path:
    """The experiment's latest final model, or one sentence saying how to make one."""
    final = latest_final_model(cfg.runs_dir, cfg.name)
    if final is None:
        raise UserError(f"experiment {cfg.name!r} has no trained model yet; run `make train EXP={cfg.name}` "
                        "or pass --ckpt")
    return final


def load_policy(cfg: DictConfig, ckpt: str | Path | None) -> tuple[DiffusionLM, Path]:
    """The model to evaluate: a saved model directory, a Lightning .ckpt of this experiment,
    or (no `ckpt`) the experiment's latest final model. Returns it with its location."""
    if ckpt is None:
        final = trained_model(cfg)
        return DiffusionLM.load(final, getattr(torch, cfg.model.dtype)), final
    path = require_file(ckpt, "checkpoint")
    if path.is_dir():
        return DiffusionLM.load(path, getattr(torch, cfg.model.dtype)), path
    policy = build_policy(cfg)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    except Exception as err:
        raise UserError(f"{path} is not a readable Lightning checkpoint ({type(err).__name__})") from None
    weights = {k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")}
    try:
        policy.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"{path} does not fit the model of experiment {cfg.name!r} "
                        f"(another family or vocabulary?): {first}") from None
    return policy, path


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() and ((path / FINAL_MODEL).is_dir() or (path / "checkpoints").is_dir())


def models_for_rule(cfg: DictConfig, ckpt: str | None, rule: str) -> tuple[list[ModelRef], Path | None]:
    """The models `rule` evaluates, and their run directory (None for a single given model).

    final      the run's final model (or the model `ckpt` names)
    best_val   checkpoints/best.ckpt, chosen by val accuracy during training; the starting model
               when the run's summary says step 0 was best
    best_test  the final model and every checkpoint of the run; the best on the test data is
               reported (optimistic: the choice is made on the numbers it reports)
    """
    if ckpt is not None and not is_run_dir(Path(ckpt)):
        if rule != "final":
            raise UserError(f"eval.checkpoint={rule} chooses among a run's checkpoints: pass --ckpt <run directory> "
                            f"(or no --ckpt for the latest run of {cfg.name}), not a single model")
        return [ModelRef(str(ckpt), Path(require_file(ckpt, "checkpoint")))], None
    if ckpt is not None:
        run_dir = Path(ckpt)
    else:
        run_dir = trained_model(cfg).resolve().parent
    final = ModelRef(FINAL_MODEL, run_dir / FINAL_MODEL)
    checkpoints = run_dir / "checkpoints"
    if rule == "final":
        return [final], run_dir
    if rule == "best_val":
        summary = run_dir / "summary.json"
        if summary.is_file() and json.loads(summary.read_text()).get("best_step") == 0:
            return [ModelRef("start (step 0 was best by val)", None)], run_dir
        if not (checkpoints / "best.ckpt").is_file():
            raise UserError(f"{run_dir} has no checkpoints/best.ckpt for eval.checkpoint=best_val")
        return [ModelRef("best.ckpt", checkpoints / "best.ckpt")], run_dir
    # Each set of weights once: the last step's checkpoint holds the final model's, best.ckpt those of
    # the best step's checkpoint (or of the final model when the last step was best).
    summary = run_dir / "summary.json"
    ended = json.loads(summary.read_text()) if summary.is_file() else {}
    refs, skip = [], {INTERRUPTED_CHECKPOINT}
    if final.source.is_dir():
        refs.append(final)
        skip.add(f"step{ended.get('steps')}")
    if (checkpoints / "best.ckpt").is_file() and ended.get("best_step") is not None:
        skip.add(f"step{ended['best_step']}")
        if final.source.is_dir() and ended["best_step"] == ended.get("steps"):
            skip.add("best")
    for path in sorted({p.resolve() for p in checkpoints.glob("*.ckpt")}):   # last.ckpt links to a step's
        if path.stem not in skip:
            refs.append(ModelRef(path.name, path))
    if not refs:
        raise UserError(f"{run_dir} has neither a final model nor checkpoints to choose from")
    return refs, run_dir


def load_ref(cfg: DictConfig, ref: ModelRef) -> DiffusionLM:
    return build_policy(cfg) if ref.source is None else load_policy(cfg, ref.source)[0]
