"""Objective registry: method name -> class (each with a `Config` dataclass)."""

from gdsd_lightning.objectives.diffu_grpo import DiffuGRPO
from gdsd_lightning.objectives.dmpo import DMPO
from gdsd_lightning.objectives.dopsd import DOPSD
from gdsd_lightning.objectives.espo import ESPO
from gdsd_lightning.objectives.gdsd import GDSD, GDSDTLC
from gdsd_lightning.objectives.sft import SFT
from gdsd_lightning.objectives.spg import SPG
from gdsd_lightning.objectives.wd1 import WD1

OBJECTIVES = {"sft": SFT, "gdsd": GDSD, "gdsd_tlc": GDSDTLC, "diffu_grpo": DiffuGRPO, "wd1": WD1,
              "spg": SPG, "espo": ESPO, "dmpo": DMPO, "dopsd": DOPSD}
RL_METHODS = [name for name in OBJECTIVES if name != "sft"]

__all__ = ["OBJECTIVES", "RL_METHODS"]
