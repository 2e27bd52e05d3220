"""Greedy evaluation of a trained model on a split or a data file: accuracy (torchmetrics),
generations as JSONL, and summary.json."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig
from torchmetrics import MeanMetric
from tqdm.auto import tqdm

from gdsd_lightning.data import load_split
from gdsd_lightning.errors import UserError
from gdsd_lightning.generation import generate_and_score
from gdsd_lightning.models.adapter import DiffusionLM
from gdsd_lightning.models.build import build_policy
from gdsd_lightning.runs import latest_final_model, require_file, write_json
from gdsd_lightning.tasks import task_from_config


def load_policy(cfg: DictConfig, ckpt: str | None) -> tuple[DiffusionLM, Path]:
    """The model to evaluate: a saved model directory, a Lightning .ckpt of this experiment,
    or (no `ckpt`) the experiment's latest final model. Returns it with its location."""
    if ckpt is None:
        final = latest_final_model(cfg.runs_dir, cfg.name)
        if final is None:
            raise UserError(f"experiment {cfg.name!r} has no trained model yet; run `make train EXP={cfg.name}` "
                            "or pass --ckpt")
        return DiffusionLM.load(final), final
    path = require_file(ckpt, "checkpoint")
    if path.is_dir():
        return DiffusionLM.load(path), path
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


def evaluate(cfg: DictConfig, ckpt: str | None = None, data: str | None = None, out: str | None = None) -> dict:
    task = task_from_config(cfg.task)
    examples, data_name = (task.load(data), Path(data).stem) if data else load_split(task, cfg.task, "test")
    examples = examples[: cfg.eval.num_examples]
    policy, source = load_policy(cfg, ckpt)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    policy = policy.to(device).eval()
    out_dir = Path(out) if out else (source if source.is_dir() else source.parent) / "eval" / data_name
    out_dir.mkdir(parents=True, exist_ok=True)

    means = {k: MeanMetric() for k in task.metric_names}
    size = cfg.eval.batch_size
    with open(out_dir / "generations.jsonl", "w", encoding="utf-8") as f:
        for start in tqdm(range(0, len(examples), size), desc=f"eval {cfg.name} on {data_name}", unit="batch"):
            batch = examples[start:start + size]
            for example, record in zip(batch, generate_and_score(policy, task, batch, cfg)):
                f.write(json.dumps({"example": example, **record}) + "\n")
                for key, metric in means.items():
                    metric.update(record[key])
    summary = {"experiment": cfg.name, "checkpoint": str(source), "data": data or data_name, "n": len(examples),
               **{k: round(float(m.compute()), 4) for k, m in means.items()}}
    write_json(out_dir / "summary.json", summary)
    summary["out"] = str(out_dir)
    return summary
