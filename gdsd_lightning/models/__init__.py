"""Model adapter, families and tokenizers."""

from gdsd_lightning.models.adapter import DiffusionLM
from gdsd_lightning.models.families import FAMILIES

__all__ = ["DiffusionLM", "FAMILIES"]
