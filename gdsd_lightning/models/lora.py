"""LoRA through peft, and the frozen reference it gives for free.

With adapters on, the reference (the frozen initial model) is the same network with its adapters
switched off: `frozen_reference(policy)` returns a view that runs the policy under peft's
`disable_adapter()` and no_grad, so no second copy of the weights exists. Without LoRA it is a
frozen deep copy.
"""

from __future__ import annotations

import copy
import re

import torch

from gdsd_lightning.errors import UserError
from gdsd_lightning.models.adapter import DiffusionLM
from gdsd_lightning.models.families import DECODER_LINEARS, lora_target_pattern


def add_lora(policy: DiffusionLM, r: int, alpha: int, dropout: float, names: list[str] | None = None) -> None:
    """Wrap the policy's transformer with LoRA adapters on `names` (default: all seven linear layers
    of a Llama / Qwen2 decoder layer) inside its decoder layers. Every name must exist there: peft
    silently skips names that match nothing (which is how the published LLaDA runs, asking for all
    seven Llama names of LLaDA's own modules, trained only q_proj, k_proj, v_proj and up_proj)."""
    from peft import LoraConfig, get_peft_model

    names = tuple(names or DECODER_LINEARS)
    pattern = lora_target_pattern(names)
    found = {n.rsplit(".", 1)[-1] for n, _ in policy.model.named_modules() if re.fullmatch(pattern, n)}
    missing = [n for n in names if n not in found]
    if missing:
        raise UserError(f"model.lora_target_modules {missing} match no linear layer in the decoder layers of this "
                        f"{policy.family.name} model; its names are {sorted(found) or 'none of the requested'}")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern, bias="none")
    policy.model = get_peft_model(policy.model, config)


def has_lora(policy: DiffusionLM) -> bool:
    return hasattr(policy.model, "disable_adapter")


class AdapterDisabled:
    """The policy with its LoRA adapters off: the frozen initial model without a second copy.
    Offers the DiffusionLM calls the objectives make on a reference."""

    def __init__(self, policy: DiffusionLM):
        self.policy = policy

    def _frozen(self, method: str, *args, **kwargs):
        with self.policy.model.disable_adapter(), torch.no_grad():
            return getattr(self.policy, method)(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        return self._frozen("forward", *args, **kwargs)

    def hidden_at(self, *args, **kwargs):
        return self._frozen("hidden_at", *args, **kwargs)

    def logits_at(self, *args, **kwargs):
        return self._frozen("logits_at", *args, **kwargs)

    def __getattr__(self, name):          # head, mask_id, tokenizer, device, ...
        return getattr(self.policy, name)

    def to(self, *args, **kwargs) -> "AdapterDisabled":
        return self                       # moves with the policy

    def eval(self) -> "AdapterDisabled":
        return self


def frozen_reference(policy: DiffusionLM) -> DiffusionLM | AdapterDisabled:
    if has_lora(policy):
        return AdapterDisabled(policy)
    return copy.deepcopy(policy).requires_grad_(False).eval()
