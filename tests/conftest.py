"""Shared fixtures: tiny models built offline, small configs, a sandboxed runs directory."""

from __future__ import annotations

import zlib

import pytest
import torch

from gdsd_lightning.cli import quiet_libraries
from gdsd_lightning.models import DiffusionLM
from gdsd_lightning.models.families import FAMILIES, build_tiny_model
from gdsd_lightning.models.tokenizer import build_char_tokenizer
from gdsd_lightning.tasks.sudoku import Sudoku


@pytest.fixture(autouse=True)
def cli_warning_filters():
    """The CLI's warning filters (tests call train() directly); per test, as pytest resets them."""
    quiet_libraries()


def make_tiny(family: str = "tiny-llada", seed: int = 0, hidden: int = 32, layers: int = 2) -> DiffusionLM:
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(FAMILIES[family], len(tokenizer), hidden, layers, 2, 2 * hidden, 128,
                             tokenizer.pad_token_id, seed)
    return DiffusionLM(model, tokenizer, FAMILIES[family]).eval()


@pytest.fixture
def tiny_llada() -> DiffusionLM:
    return make_tiny("tiny-llada")


@pytest.fixture
def tiny_dream() -> DiffusionLM:
    return make_tiny("tiny-dream")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


# ---- short training runs -------------------------------------------------------------
SMALL = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64",
         "task.num_val=8", "eval.batch_size=8", "trainer.log_every_n_steps=1"]


def rl_overrides(tmp_path, steps, **extra):
    args = SMALL + [f"runs_dir={tmp_path / 'runs'}", "model.init_from=null", f"trainer.max_steps={steps}",
                    "rollout.prompts_per_step=2", "rollout.num_generations=4", "method.num_iterations=2",
                    "trainer.val_every_n_steps=2", "trainer.checkpoint_every_n_steps=2", "optim.lr=1e-3"]
    return args + [f"{k}={v}" for k, v in extra.items()]


@pytest.fixture
def varied_reward(monkeypatch):
    """A fresh random model scores 0 on sudoku, so every advantage would be 0; use a reward that
    differs whenever two completions differ, so the loop has a signal to follow."""
    monkeypatch.setattr(Sudoku, "reward", lambda self, completion, example: zlib.crc32(completion.encode()) % 100 / 100)


def weights(model: DiffusionLM) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}
