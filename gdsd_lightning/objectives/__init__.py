"""Objective registry: method name -> class (each with a `Config` dataclass)."""

from gdsd_lightning.objectives.gdsd import GDSD, GDSDTLC
from gdsd_lightning.objectives.sft import SFT

OBJECTIVES = {"sft": SFT, "gdsd": GDSD, "gdsd_tlc": GDSDTLC}

__all__ = ["OBJECTIVES"]
