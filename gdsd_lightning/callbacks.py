"""Callbacks: rollout statistics and sample texts, the val-accuracy history, the run summary,
checkpoints after evaluation; the progress bar; and the atomic checkpoint writer."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from gdsd_lightning.runs import write_json


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar as a person reads it. A run ends at `trainer.max_steps` (the
    Trainer has max_epochs=-1, which Lightning's bar shows as `Epoch 0/-2`): the epoch is shown
    without a bound, the optimiser step against max_steps beside the metrics, and not the logger's
    version (`v_num: oard`, the tail of the tensorboard/ directory's name)."""

    def _get_train_description(self, current_epoch: int) -> str:
        return f"{f'Epoch {current_epoch}':{len(self.validation_description)}}"   # as wide: no flicker

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return {"step": f"{trainer.global_step}/{trainer.max_steps}", **metrics}


def log_samples(trainer: L.Trainer, tag: str, rows: list[tuple[str, str, float]]) -> None:
    """(prompt, completion, reward) rows to every logger at this optimiser step: a markdown table in
    TensorBoard's text tab, a W&B table, a JSON line per row in the CSV logger's samples.jsonl."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text(tag, samples_markdown(rows), global_step=trainer.global_step)
        elif isinstance(logger, WandbLogger):
            logger.log_text(key=tag, columns=["prompt", "completion", "reward"], data=[list(r) for r in rows],
                            step=trainer.global_step)
        elif isinstance(logger, CSVLogger) and trainer.is_global_zero:
            Path(logger.log_dir).mkdir(parents=True, exist_ok=True)
            with open(Path(logger.log_dir) / "samples.jsonl", "a", encoding="utf-8") as f:
                for prompt, completion, reward in rows:
                    f.write(json.dumps({"step": trainer.global_step, "tag": tag, "prompt": prompt,
                                        "completion": completion, "reward": reward}) + "\n")


def samples_markdown(rows: list[tuple[str, str, float]]) -> str:
    """A markdown table of (prompt, completion, reward) for TensorBoard's text tab."""
    escape = lambda s: s.replace("|", "\\|").replace("\n", "⏎")  # noqa: E731
    lines = ["| prompt | completion | reward |", "|---|---|---|"]
    lines += [f"| {escape(p)} | {escape(c)} | {r:.3f} |" for p, c, r in rows]
    return "\n".join(lines)


class RolloutStatistics(L.Callback):
    """After each rollout (one training step: method.num_iterations optimiser steps), under
    `rollout/`: the mean and std of the batch's rewards, the fraction of groups whose rewards are
    all equal, the completion length (tokens before the first EOS) and the entropy (per completion,
    the mean over its positions of the entropy of the prediction that committed each), each a batch
    mean; the task's extra metrics averaged over the completions (code: `integrity/<check>`, the
    fraction caught by each integrity check of the sandbox); on CUDA `system/peak_memory_gib`, the mean over ranks of each
    rank's peak; `rollout/seconds`, the sampling's wall time, and on rollouts that measured it the
    mismatch to the exact sampler, `rollout/mismatch/<figure>` (module.mismatch_stats, and the
    importance weights' `weight_mean` and `capped_fraction`; means over ranks, max_abs_log_ratio
    too). Each rollout's seconds and mismatch are kept in `curve` (checkpointed) for summary.json.
    On the first rollout in each window of `text_every_n_steps` optimiser steps, the
    first `num_texts` (prompt, completion, reward) rows go to every logger (`log_samples`)."""

    def __init__(self, text_every_n_steps: int = 50, num_texts: int = 4):
        self.text_every_n_steps, self.num_texts = text_every_n_steps, num_texts
        self._last_text_step = -1
        self.curve: list[dict] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        rollout = getattr(module, "last_rollout", None)
        if rollout is None:
            return
        grouped = rollout.rewards.view(-1, rollout.group_size)
        stats = {
            "rollout/reward_mean": rollout.rewards.mean(),
            "rollout/reward_std": rollout.rewards.std(),
            # correction=0: a group of one has no spread (not NaN)
            "rollout/zero_std_group_fraction": (grouped.std(dim=1, correction=0) < 1e-8).float().mean(),
            "rollout/completion_length": rollout.lengths.mean(),
            "rollout/entropy": rollout.entropy.mean(),
            **{f"rollout/{name}": values.mean() for name, values in rollout.metrics.items()},
            "rollout/seconds": torch.tensor(rollout.seconds, device=module.device),
            **{f"rollout/mismatch/{name}": torch.tensor(value, device=module.device)
               for name, value in rollout.mismatch.items()},
        }
        self.curve.append({"rollout": module.rollouts_done, "step": trainer.global_step,
                           "seconds": round(rollout.seconds, 3), **rollout.mismatch})
        if module.device.type == "cuda":   # per rank; the logged value is the mean over ranks
            stats["system/peak_memory_gib"] = torch.tensor(torch.cuda.max_memory_allocated(module.device) / 2**30,
                                                           device=module.device)
        module.log_dict(stats, batch_size=rollout.rewards.numel(), prog_bar=False, sync_dist=True)
        module.log("reward", stats["rollout/reward_mean"], prog_bar=True, logger=False, batch_size=1)
        step = trainer.global_step
        if step // self.text_every_n_steps != self._last_text_step // self.text_every_n_steps:
            self._last_text_step = step
            rows = list(zip(rollout.prompts, rollout.completions, rollout.rewards.tolist()))[: self.num_texts]
            log_samples(trainer, "rollout/samples", rows)

    def state_dict(self) -> dict:
        return {"curve": self.curve}

    def load_state_dict(self, state: dict) -> None:
        self.curve = list(state.get("curve", []))   # checkpoints from before the curve have none


class ReferenceSync(L.Callback):
    """Every `every_n_steps` optimiser steps, copy the policy's weights into the frozen reference
    (for objectives that hold one): the KL anchor then follows the policy at a slower pace."""

    def __init__(self, every_n_steps: int):
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        reference = getattr(module, "reference", None)
        if reference is not None and trainer.global_step % self.every_n_steps == 0:
            reference.load_state_dict(module.policy.state_dict())


class CheckpointAfterEvaluation(ModelCheckpoint):
    """Periodic checkpoints (every `every_n_steps` optimiser steps, a multiple of the evaluation
    interval) written right after that step's evaluation, so that a checkpoint always holds its
    step's val result: a run killed between the two loses nothing.

    `last.ckpt` is a link that always points at a complete checkpoint: the link is swapped
    atomically, and the checkpoint it replaces is deleted only afterwards (Lightning deletes it
    first, which leaves a dangling link for a moment)."""

    def __init__(self, every_n_steps: int, **kwargs):
        super().__init__(save_on_train_epoch_end=False, **kwargs)
        self.every_n_steps = every_n_steps
        self._superseded: list[str] | None = None

    def on_validation_end(self, trainer, module) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self._superseded = []
            try:
                super().on_validation_end(trainer, module)
            finally:
                superseded, self._superseded = self._superseded, None
            for path in superseded:
                super()._remove_checkpoint(trainer, path)

    def _remove_checkpoint(self, trainer, filepath: str) -> None:
        if self._superseded is None:
            super()._remove_checkpoint(trainer, filepath)
        else:
            self._superseded.append(filepath)

    @staticmethod
    def _link_checkpoint(trainer, filepath: str, linkpath: str) -> None:
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            tmp = f"{linkpath}.{os.getpid()}.tmp"
            if os.path.lexists(tmp):
                os.remove(tmp)
            os.symlink(os.path.relpath(filepath, os.path.dirname(linkpath)), tmp)
            os.replace(tmp, linkpath)
        trainer.strategy.barrier()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file in the target directory, flushed to disk, then
    renamed over the target: a crash mid-write never leaves a half-written checkpoint behind.
    (Lightning's own save goes through the system temp dir, which is not atomic when that is
    another filesystem, as on most clusters.)"""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


class ValHistory(L.Callback):
    """Keeps, per evaluation, every val metric with the optimiser step, the rollouts drawn and the
    training seconds so far (saved in checkpoints), and how many rollout completions each
    integrity check caught (code tasks; rank 0's completions); logs val sample completions as
    text, and rewrites summary.json after every evaluation (with RolloutStatistics' per-rollout
    curve, `rollout_curve`, and its total sampling time, `rollout_seconds`)."""

    def __init__(self, run_dir: Path, experiment: str):
        self.run_dir, self.experiment = run_dir, experiment
        self.curve: list[dict] = []
        self.integrity: dict[str, int] = {}
        self.elapsed_before = 0.0
        self._start = time.time()
        self._fitting = False          # the evaluation before training is at 0 seconds

    def on_validation_end(self, trainer, module) -> None:
        if trainer.sanity_checking or "val/accuracy" not in trainer.callback_metrics:
            return
        point = {"step": trainer.global_step, "rollouts": getattr(module, "rollouts_done", trainer.global_step),
                 "seconds": round(self.wall_time(), 1) if self._fitting else 0.0,
                 **{key.removeprefix("val/"): float(value) for key, value in trainer.callback_metrics.items()
                    if key.startswith("val/")}}
        if self.curve and self.curve[-1]["step"] == trainer.global_step:
            self.curve[-1] = point
        else:
            self.curve.append(point)
        samples = getattr(module, "val_samples", [])
        log_samples(trainer, "val/samples", [(s["prompt"], s["completion"], s["reward"]) for s in samples])
        if trainer.is_global_zero:
            self.write_summary(trainer)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        rollout = getattr(module, "last_rollout", None)
        for name, values in (rollout.metrics if rollout is not None else {}).items():
            if name.startswith("integrity/"):
                check = name.removeprefix("integrity/")
                self.integrity[check] = self.integrity.get(check, 0) + int(values.sum())

    @property
    def history(self) -> list[list[float]]:
        """(step, val accuracy) per evaluation."""
        return [[point["step"], point["accuracy"]] for point in self.curve]

    def on_fit_start(self, trainer, module) -> None:
        self._start, self._fitting = time.time(), True

    def wall_time(self) -> float:
        return self.elapsed_before + time.time() - self._start

    def write_summary(self, trainer, stopped: str | None = None) -> None:
        """`stopped`: why a guard ended the run before max_steps (the summary then says so).
        `fit_started` is the unix time `seconds` count from (this fit's start, less the training
        time of the fits a resumed run continues)."""
        history = self.history
        best = max(history, key=lambda p: p[1]) if history else None
        rollouts = next((cb.curve for cb in trainer.callbacks if isinstance(cb, RolloutStatistics)), [])
        write_json(self.run_dir / "summary.json", {
            **({"stopped": stopped} if stopped else {}),
            "experiment": self.experiment,
            "steps": trainer.global_step,
            "rollouts": getattr(trainer.lightning_module, "rollouts_done", trainer.global_step),
            "wall_time_s": round(self.wall_time(), 1),
            "fit_started": round(self._start - self.elapsed_before, 3),
            "val_accuracy": history,
            "val_curve": self.curve,
            "final_val_accuracy": history[-1][1] if history else None,
            "best_val_accuracy": best[1] if best else None,
            "best_step": best[0] if best else None,
            **({"rollout_seconds": round(sum(r["seconds"] for r in rollouts), 1), "rollout_curve": rollouts}
               if rollouts else {}),
            **({"integrity": self.integrity} if self.integrity else {}),
        })

    def state_dict(self) -> dict:
        return {"curve": self.curve, "elapsed": self.wall_time(), "integrity": self.integrity}

    def load_state_dict(self, state: dict) -> None:
        # checkpoints written before the curve was kept hold only (step, accuracy) pairs
        self.curve = [dict(p) for p in state["curve"]] if "curve" in state else \
            [{"step": step, "accuracy": accuracy} for step, accuracy in state["history"]]
        self.elapsed_before = state["elapsed"]
        self.integrity = dict(state.get("integrity", {}))      # checkpoints before the counts: none

