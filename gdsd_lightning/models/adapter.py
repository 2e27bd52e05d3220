"""`DiffusionLM`: the one interface every model family presents to samplers and objectives.

    logits = model(input_ids, attention_mask)   # (B, T, V); logits[:, l] is the denoiser's
                                                # distribution for token l, whatever the family
    model.mask_id, model.eos_id, model.pad_id   # from the tokenizer
    model.encode_prompts(texts) / model.decode(completion_ids)
    model.save(dir) / DiffusionLM.load(dir)     # Hugging Face save_pretrained directories
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from gdsd_lightning.errors import UserError
from gdsd_lightning.models.families import FAMILIES, FamilySpec, make_bidirectional

FAMILY_FILE = "gdsd_family.json"


class DiffusionLM(nn.Module):
    def __init__(self, model: PreTrainedModel, tokenizer, family: FamilySpec):
        super().__init__()
        if tokenizer.mask_token_id is None:
            raise UserError(f"the tokenizer of this {family.name} model has no mask token; a masked "
                            "diffusion model needs one (add it with tokenizer.add_special_tokens)")
        if tokenizer.eos_token_id is None:
            raise UserError(f"the tokenizer of this {family.name} model has no eos token")
        self.model = make_bidirectional(model)
        self.tokenizer = tokenizer
        self.family = family
        self.mask_id = tokenizer.mask_token_id
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        if self.family.shift_logits:  # position l-1 predicts token l; position 0 predicts nothing
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits

    def hidden_at(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  positions: torch.Tensor) -> torch.Tensor:
        """Final hidden states (B, k, H) that predict the tokens at `positions` (B, k); `head` turns
        them into logits. Dream's shift is applied here (position l-1 predicts token l)."""
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        source = (positions - 1 if self.family.shift_logits else positions).clamp(min=0)
        return hidden.gather(1, source.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))

    @property
    def head(self) -> nn.Module:
        """The LM head (hidden -> vocabulary logits)."""
        return self.model.get_output_embeddings()

    def logits_at(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  positions: torch.Tensor) -> torch.Tensor:
        """Denoiser logits (B, k, V) at `positions` (B, k) only: the LM head never sees the other
        positions. Same values as forward(...) gathered at `positions`."""
        return self.head(self.hidden_at(input_ids, attention_mask, positions))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def decoder_layer_classes(self) -> set[str]:
        """Class names to shard / checkpoint per layer (the model's `_no_split_modules`)."""
        return set(getattr(self.model, "_no_split_modules", None) or [])

    # ---- text <-> ids -------------------------------------------------------------------
    def encode_prompts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompt ids and their attention mask (1 = real token)."""
        encoded = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        width = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, tokens in enumerate(encoded):
            ids[row, width - len(tokens):] = torch.tensor(tokens, dtype=torch.long)
            mask[row, width - len(tokens):] = 1
        return ids, mask

    def encode_completions(self, texts: list[str], length: int) -> torch.Tensor:
        """Completion ids followed by EOS up to `length` (cut if longer), the LLaDA convention."""
        ids = torch.full((len(texts), length), self.eos_id, dtype=torch.long)
        for row, text in enumerate(texts):
            tokens = self.tokenizer(text, add_special_tokens=False)["input_ids"][:length]
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return ids

    def decode(self, completion_ids: torch.Tensor) -> list[str]:
        """Completion texts, each cut at its first EOS."""
        texts = []
        for row in completion_ids.tolist():
            if self.eos_id in row:
                row = row[: row.index(self.eos_id)]
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True))
        return texts

    # ---- persistence --------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        (directory / FAMILY_FILE).write_text(json.dumps({"family": self.family.name}))

    @classmethod
    def load(cls, directory: str | Path, dtype: torch.dtype = torch.float32) -> "DiffusionLM":
        directory = Path(directory)
        if not (directory / FAMILY_FILE).is_file():
            raise UserError(f"{directory} is not a saved gdsd_lightning model (no {FAMILY_FILE})")
        family = FAMILIES[json.loads((directory / FAMILY_FILE).read_text())["family"]]
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
        return cls(model, tokenizer, family)
