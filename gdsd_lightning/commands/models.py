"""Model files in the authors' published formats: `export` (a trained model) and `toy-checkpoint`
(a tiny random one for `make smoke-real`)."""

from __future__ import annotations

from pathlib import Path

from gdsd_lightning.experiment import load_experiment
from gdsd_lightning.errors import UserError


def export(model: str, out: str, dtype: str = "bfloat16") -> str:
    """Write the saved model directory `model` in its family's published format into `out`."""
    import torch

    from gdsd_lightning.models import DiffusionLM
    from gdsd_lightning.models.published import write_published

    missing = write_published(DiffusionLM.load(model, getattr(torch, dtype)), out)
    return (f"exported {model} to {out} in the published format"
            + (f"; copy {', '.join(missing)} there from the base's hub repository" if missing else ""))


def toy_checkpoint(experiment: str, out: str = "runs/toy_published") -> str:
    """A toy random checkpoint in the published format of `experiment`'s family, in <out>/<family>;
    returns that directory."""
    from gdsd_lightning.models.toy_checkpoints import WRITERS

    family = load_experiment(experiment).model.family
    if family not in WRITERS:
        raise UserError(f"{experiment} is not a real-model recipe (model.family={family}); pick a *_llada_* or "
                        "*_dream_* one")
    directory = Path(out) / family
    WRITERS[family](directory)
    return str(directory)
