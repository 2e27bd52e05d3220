"""`DiffusionLM`: the one interface every model family presents to samplers and objectives.

    logits = model(input_ids, attention_mask)   # (B, T, V); logits[:, l] is the denoiser's
                                                # distribution for token l, whatever the family
    model.mask_id, model.eos_id, model.pad_id   # from the tokenizer
    model.encode_prompts(texts) / model.decode(completion_ids)
    model.save(dir) / DiffusionLM.load(dir)     # Hugging Face save_pretrained directories
    DiffusionLM.load_base(family, source)       # a published checkpoint (hub id or directory)

Every forward passes the family's position ids (`position_ids`): Dream counts them from each
row's first real token under left padding, as its own generation does.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from transformers import Cache, PreTrainedModel

from gdsd_lightning.errors import UserError
from gdsd_lightning.models.families import FAMILIES, FamilySpec, make_bidirectional
from gdsd_lightning.models.published import load_pretrained

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
        self.base_source: str | None = None   # where the weights came from (saved beside LoRA adapters)
        self.published: dict | None = None    # {"config": the authors' config.json, "source": where}: for export

    def position_ids(self, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """(B, T) position ids, or None for 0..T-1. Dream's generation_utils.py: the cumulative count
        of real tokens minus one, pads at 1, so a left-padded row starts at 0 on its first real token.
        (With RoPE and masked pads this moves the logits only by rounding.)"""
        if attention_mask is None or not self.family.positions_from_first_token:
            return None
        return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask,
                            position_ids=self.position_ids(attention_mask)).logits
        if self.family.shift_logits:  # position l-1 predicts token l; position 0 predicts nothing
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits

    @property
    def transformer(self) -> PreTrainedModel:
        """The transformers model under a peft wrapper, if any (LoRA layers sit inside it)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def hidden_at(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  positions: torch.Tensor) -> torch.Tensor:
        """Final hidden states (B, k, H) that predict the tokens at `positions` (B, k); `head` turns
        them into logits. Dream's shift is applied here (position l-1 predicts token l)."""
        hidden = self.transformer.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                             position_ids=self.position_ids(attention_mask)).last_hidden_state
        source = (positions - 1 if self.family.shift_logits else positions).clamp(min=0)
        return torch.take_along_dim(hidden, source.unsqueeze(-1), dim=1)

    @property
    def head(self) -> nn.Module:
        """The LM head (hidden -> vocabulary logits)."""
        return self.transformer.get_output_embeddings()

    def logits_at(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  positions: torch.Tensor) -> torch.Tensor:
        """Denoiser logits (B, k, V) at `positions` (B, k) only: the LM head never sees the other
        positions. Same values as forward(...) gathered at `positions`."""
        return self.head(self.hidden_at(input_ids, attention_mask, positions))

    def window_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, start: int, end: int,
                      positions: torch.Tensor, cache: Cache | None = None) -> tuple[torch.Tensor, Cache]:
        """Denoiser logits (B, k, V) at `positions` (B, k), each inside the window start..end-1,
        with the keys and values of every position outside the window cached (Fast-dLLM's dual
        cache). The whole window runs; the LM head sees `positions` only.

        Without `cache`: one forward over the whole sequence, reordered as [outside ; window] with
        each token keeping its own position id (bidirectional attention does not see the order),
        exactly forward(...) gathered at `positions`; returns the logits and the outside positions'
        keys and values. With `cache`: only the window's tokens are run, attending to the cached outside,
        which is left as it was. Not exact once the window's tokens differ from the cached call's:
        the outside's keys and values do not see the change. The window is shifted by one for a
        family whose position l-1 predicts token l."""
        shift = int(self.family.shift_logits)
        length = input_ids.shape[1]
        window = torch.arange(start - shift, end - shift, device=input_ids.device)
        outside = torch.cat([torch.arange(0, start - shift, device=input_ids.device),
                             torch.arange(end - shift, length, device=input_ids.device)])
        order = torch.cat([outside, window])
        family_positions = self.position_ids(attention_mask)
        position_ids = order.unsqueeze(0).expand(input_ids.shape[0], -1) if family_positions is None \
            else family_positions[:, order]
        backbone = self.transformer.base_model
        if cache is None:
            out = backbone(input_ids=input_ids[:, order], attention_mask=attention_mask[:, order],
                           position_ids=position_ids, use_cache=True)
        else:
            out = backbone(input_ids=input_ids[:, window], attention_mask=attention_mask[:, order],
                           position_ids=position_ids[:, len(outside):], past_key_values=cache, use_cache=True)
        out.past_key_values.crop(-len(window))        # drop the window's own keys and values again
        hidden = out.last_hidden_state[:, -len(window):]   # index j predicts token start + j
        hidden = torch.take_along_dim(hidden, (positions - start).unsqueeze(-1), dim=1)
        return self.head(hidden), out.past_key_values

    @contextmanager
    def sampling(self, dropout: bool):
        """The network as the sampler runs it: train mode (dropout active) when `dropout`, else eval;
        layer checkpointing off meanwhile (no gradient flows there, and transformers drops a KV cache
        under it). The mode and checkpointing are restored after."""
        checkpointed = [m for m in self.modules() if getattr(m, "gradient_checkpointing", False) is True]
        was_training = self.training
        for module in checkpointed:
            module.gradient_checkpointing = False
        self.train(dropout)
        try:
            yield self
        finally:
            for module in checkpointed:
                module.gradient_checkpointing = True
            self.train(was_training)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def decoder_layer_classes(self) -> set[str]:
        """Class names to shard per layer: transformers' `_no_split_modules` (LlamaDecoderLayer,
        Qwen2DecoderLayer)."""
        return set(self.transformer._no_split_modules)

    # ---- text <-> ids -------------------------------------------------------------------
    def encode_prompts(self, texts: list[str], max_length: int | None = None,
                       add_special_tokens: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompt ids and their attention mask (1 = real token); with `max_length`, each
        prompt keeps only its last max_length tokens (the releases' left truncation).
        `add_special_tokens`: also the tokenizer's own (e.g. a BOS), as the releases' evaluation code
        encodes prompts."""
        encoded = [self.tokenizer(t, add_special_tokens=add_special_tokens)["input_ids"][-max_length if max_length else None:]
                   for t in texts]
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

    def decode(self, completion_ids: torch.Tensor, mode: str = "first_eos") -> list[str]:
        """Completion texts. `first_eos`: each cut at its first EOS, special tokens dropped; `all`: all
        L tokens, special tokens dropped (the releases' reward input, so text after an early EOS counts);
        `special`: all L tokens with the special tokens kept (d-OPSD's gate)."""
        texts = []
        for row in completion_ids.tolist():
            if mode == "first_eos" and self.eos_id in row:
                row = row[: row.index(self.eos_id)]
            texts.append(self.tokenizer.decode(row, skip_special_tokens=mode != "special"))
        return texts

    # ---- persistence --------------------------------------------------------------------
    def save(self, directory: str | Path, state_dict: dict | None = None) -> None:
        """A save_pretrained directory (transformers' Llama / Qwen2 format) plus the family; with LoRA
        only the adapters are written and `base` records where the base weights come from. The
        published config of a real family is kept for `export`. `state_dict`: full weights
        gathered from shards (FSDP), keys as in `self.model.state_dict()`."""
        directory = Path(directory)
        self.model.save_pretrained(directory, state_dict=state_dict)
        self.tokenizer.save_pretrained(directory)
        record = {"family": self.family.name, **({"base": self.base_source} if self.transformer is not self.model else {}),
                  **({"published": self.published} if self.published else {})}
        (directory / FAMILY_FILE).write_text(json.dumps(record))

    @classmethod
    def load(cls, directory: str | Path, dtype: torch.dtype = torch.float32, quantization: str | None = None,
             attn_implementation: str = "sdpa") -> "DiffusionLM":
        directory = Path(directory)
        if not (directory / FAMILY_FILE).is_file():
            raise UserError(f"{directory} is not a saved gdsd_lightning model (no {FAMILY_FILE})")
        record = json.loads((directory / FAMILY_FILE).read_text())
        family = FAMILIES[record["family"]]
        if "base" in record:                       # LoRA adapters on top of a base
            from peft import PeftModel

            policy = cls.load_base(family, record["base"], dtype, quantization, attn_implementation)
            policy.model = PeftModel.from_pretrained(policy.model, directory, is_trainable=True)
            return policy
        return cls.load_base(family, str(directory), dtype, quantization, attn_implementation)

    @classmethod
    def load_base(cls, family: FamilySpec, source: str, dtype: torch.dtype, quantization: str | None = None,
                  attn_implementation: str = "sdpa") -> "DiffusionLM":
        """Weights from a published checkpoint (hub id or directory; models/published.py) or a saved
        directory, on the family's transformers class; no remote code runs."""
        local = Path(source).is_dir()
        record = Path(source) / FAMILY_FILE
        saved = json.loads(record.read_text()) if local and record.is_file() else {}
        family = FAMILIES[saved.get("family", family.name)]
        model, tokenizer, published_config = load_pretrained(family, source, dtype, quantization, attn_implementation)
        policy = cls(model, tokenizer, family)
        policy.base_source = str(Path(source).resolve()) if local else source
        policy.published = saved.get("published") if published_config is None else {
            "config": published_config, "source": policy.base_source}
        return policy
