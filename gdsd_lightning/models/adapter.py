"""`DiffusionLM`: the one interface every model family presents to samplers and objectives.

    logits = model(input_ids, attention_mask)   # (B, T, V); logits[:, l] is the denoiser's
                                                # distribution for token l, whatever the family
    model.mask_id, model.eos_id, model.pad_id   # from the tokenizer
    model.encode_prompts(texts) / model.decode(completion_ids)
    model.save(dir) / DiffusionLM.load(dir)     # Hugging Face save_pretrained directories
    DiffusionLM.load_base(family, hub_id_or_dir)  # real families: the hub or a local copy
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, Cache, PreTrainedModel

from gdsd_lightning.errors import UserError
from gdsd_lightning.hub import offline_unless_reachable, unreachable
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
        self.base_source: str | None = None   # where the weights came from (saved beside LoRA adapters)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
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
        out = self.transformer.base_model(input_ids=input_ids, attention_mask=attention_mask)
        hidden = getattr(out, "last_hidden_state", None)
        if hidden is None:  # remote code whose backbone returns logits only (LLaDA): post-norm states
            hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask,
                                      output_hidden_states=True).hidden_states[-1]
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
        cache; families with `kv_cache` only). The whole window runs; the LM head sees `positions` only.

        Without `cache`: one forward over the whole sequence, reordered as [outside ; window] with
        each token keeping its own position id (bidirectional attention does not see the order),
        exactly forward(...) gathered at `positions`; returns the logits and the outside positions'
        keys and values. With `cache`: only the window's tokens are run, attending to the cached outside,
        which is left as it was. Not exact once the window's tokens differ from the cached call's:
        the outside's keys and values do not see the change. The window is shifted by one for a
        family whose position l-1 predicts token l."""
        if not self.family.kv_cache:
            raise UserError(f"the {self.family.name} family does not support the sampler's KV cache "
                            "(sampler.kv_cache); see FamilySpec.kv_cache in models/families.py")
        shift = int(self.family.shift_logits)
        length = input_ids.shape[1]
        window = torch.arange(start - shift, end - shift, device=input_ids.device)
        outside = torch.cat([torch.arange(0, start - shift, device=input_ids.device),
                             torch.arange(end - shift, length, device=input_ids.device)])
        order = torch.cat([outside, window])
        position_ids = order.unsqueeze(0).expand(input_ids.shape[0], -1)
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

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def decoder_layer_classes(self) -> set[str]:
        """Class names to shard / checkpoint per layer (the family's, else `_no_split_modules`)."""
        if self.family.decoder_layer:
            return {self.family.decoder_layer}
        return set(getattr(self.transformer, "_no_split_modules", None) or [])

    # ---- text <-> ids -------------------------------------------------------------------
    def encode_prompts(self, texts: list[str], add_special_tokens: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompt ids and their attention mask (1 = real token). `add_special_tokens`:
        also the tokenizer's own (e.g. a BOS), as the releases' evaluation code encodes prompts."""
        encoded = [self.tokenizer(t, add_special_tokens=add_special_tokens)["input_ids"] for t in texts]
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
    def save(self, directory: str | Path, state_dict: dict | None = None) -> None:
        """A save_pretrained directory plus the family; with LoRA only the adapters are written and
        `base` records where the base weights come from. `state_dict`: full weights gathered from
        shards (FSDP), keys as in `self.model.state_dict()`."""
        directory = Path(directory)
        self.model.save_pretrained(directory, state_dict=state_dict)
        self.tokenizer.save_pretrained(directory)
        record = {"family": self.family.name, **({"base": self.base_source} if self.transformer is not self.model else {})}
        (directory / FAMILY_FILE).write_text(json.dumps(record))

    @classmethod
    def load(cls, directory: str | Path, dtype: torch.dtype = torch.float32) -> "DiffusionLM":
        directory = Path(directory)
        if not (directory / FAMILY_FILE).is_file():
            raise UserError(f"{directory} is not a saved gdsd_lightning model (no {FAMILY_FILE})")
        record = json.loads((directory / FAMILY_FILE).read_text())
        family = FAMILIES[record["family"]]
        if "base" in record:                       # LoRA adapters on top of a base
            from peft import PeftModel

            policy = cls.load_base(family, record["base"], dtype)
            policy.model = PeftModel.from_pretrained(policy.model, directory, is_trainable=True)
            return policy
        return cls.load_base(family, str(directory), dtype)

    @classmethod
    def load_base(cls, family: FamilySpec, source: str, dtype: torch.dtype) -> "DiffusionLM":
        """Weights from a saved directory or (real families) a hub id; a remote-code family loads
        with its own modeling code. Fails in seconds, in one sentence, when the hub is unreachable
        and the weights are not cached."""
        local = Path(source).is_dir()
        if local and (Path(source) / FAMILY_FILE).is_file():
            family = FAMILIES[json.loads((Path(source) / FAMILY_FILE).read_text())["family"]]
        online = local or offline_unless_reachable()
        loader = AutoModel if family.pretrained else AutoModelForCausalLM
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=family.pretrained)
            model = loader.from_pretrained(source, dtype=dtype, trust_remote_code=family.pretrained)
        except OSError as err:          # the hub's errors (missing repo, offline) are OSErrors
            if not online:
                raise unreachable(f"{family.name} model", source, "set model.path=<local directory>") from None
            raise UserError(f"cannot load {family.name} model {source!r}: {str(err).splitlines()[0]}") from None
        if tokenizer.mask_token_id is None and family.mask_token_id is not None:
            tokenizer.mask_token = tokenizer.convert_ids_to_tokens(family.mask_token_id)
        policy = cls(model, tokenizer, family)
        policy.base_source = str(Path(source).resolve()) if local else source
        return policy
