"""Shared fixtures: tiny models built offline, small configs, a sandboxed runs directory."""

from __future__ import annotations

import pytest
import torch

from gdsd_lightning.models import DiffusionLM
from gdsd_lightning.models.families import FAMILIES, build_tiny_model
from gdsd_lightning.models.tokenizer import build_char_tokenizer


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
