"""Character-level tokenizer for the tiny task models, built offline with `tokenizers`."""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = {"pad_token": "<pad>", "mask_token": "<mask>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>"}
CHARACTERS = [chr(i) for i in range(32, 127)] + ["\n"]
# Role-tagged turns, so that chat prompts (task.prompt_style=chat) run on the tiny stand-ins.
CHAT_TEMPLATE = ("{% for message in messages %}<{{ message['role'] }}>\n{{ message['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>\n{% endif %}")


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character plus pad, mask, eos, bos and unk; a chat template."""
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS.values(), *CHARACTERS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=CHAT_TEMPLATE, **SPECIAL_TOKENS)
