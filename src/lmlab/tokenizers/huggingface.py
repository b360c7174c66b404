"""A Hugging Face `tokenizers.Tokenizer` (whatever a `tokenizer.json` describes: byte-level BPE for GPT-2 and
Llama 3, WordPiece for BERT, Unigram for T5, BPE with byte fallback for sentencepiece models) with the role of
each special token and the chat template."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import tokenizers
from tokenizers import decoders, models

from lmlab.errors import LmlabError
from lmlab.io import write_text
from lmlab.tokenizers.base import HF_CONFIG_FILE, LMLAB_TOKENIZER_FILE, TOKENIZER_FILE
from lmlab.tokenizers.chat_template import render_chat_template

DEFAULT_SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>")

# The role a special token plays, recognised by its usual spelling. The first listed token wins a role.
SPECIAL_TOKEN_ROLES = {
    "<|endoftext|>": ("bos", "eos"),  # GPT-2: one token marks where a document ends and the next begins
    "<|pad|>": ("pad",),
    "<s>": ("bos",),
    "</s>": ("eos",),
    "<pad>": ("pad",),
    "<unk>": ("unk",),
    "<mask>": ("mask",),
    "[CLS]": ("cls",),
    "[SEP]": ("sep",),
    "[PAD]": ("pad",),
    "[UNK]": ("unk",),
    "[MASK]": ("mask",),
}


def _gpt2_byte_alphabet() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character (Radford et al. 2019, `encoder.py`).

    Printable Latin-1 bytes stand for themselves; the others (controls, space) are moved to 256 + n,
    so a space becomes 'Ġ' and a newline 'Ċ'. BPE then works on strings with no invisible characters.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(shifted)}}


BYTE_TO_UNICODE = _gpt2_byte_alphabet()
UNICODE_TO_BYTE = {char: byte for byte, char in BYTE_TO_UNICODE.items()}
BYTE_FALLBACK_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # sentencepiece's token for a raw byte


@dataclass
class Tokenizer:
    """A `tokenizers.Tokenizer`, which tokens play which role (bos, eos, pad, ...), and the chat template."""

    backend: tokenizers.Tokenizer
    special_tokens: dict[str, str] = field(default_factory=dict)  # role -> token text, e.g. {"eos": "</s>"}
    chat_template: str | None = None

    def __post_init__(self) -> None:
        # A tokenizer.json may pad or cut every text to a fixed length (MiniLM's pads to 128). Lengths
        # are the caller's business: encode returns exactly the tokens of the text.
        self.backend.no_padding()
        self.backend.no_truncation()

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def _role_id(self, role: str) -> int | None:
        token = self.special_tokens.get(role)
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_id(self) -> int | None:
        return self._role_id("bos")

    @property
    def eos_id(self) -> int | None:
        return self._role_id("eos")

    @property
    def pad_id(self) -> int | None:
        return self._role_id("pad")

    @property
    def unk_id(self) -> int | None:
        return self._role_id("unk")

    @property
    def cls_id(self) -> int | None:
        return self._role_id("cls")

    @property
    def sep_id(self) -> int | None:
        return self._role_id("sep")

    @property
    def mask_id(self) -> int | None:
        return self._role_id("mask")

    @property
    def kind(self) -> str:
        """The tokenization algorithm, in the field's words."""
        model = self.backend.model
        if isinstance(model, models.BPE):
            if isinstance(self.backend.decoder, decoders.ByteLevel):
                return "byte-level BPE"
            return "BPE with byte fallback" if model.byte_fallback else "BPE"
        return type(model).__name__

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; with `add_special_tokens`, wrapped as the model expects (BOS, [CLS] ... [SEP])."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)  # ints, not tensors

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.backend.id_to_token(i)

    def token_bytes(self, i: int) -> bytes:
        """The bytes of text token `i` stands for; a special token stands for its own spelling."""
        token = self.backend.id_to_token(i)
        if token is None:
            raise LmlabError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
        if i in self.backend.get_added_tokens_decoder():
            return token.encode()
        if isinstance(self.backend.decoder, decoders.ByteLevel) and all(c in UNICODE_TO_BYTE for c in token):
            return bytes(UNICODE_TO_BYTE[c] for c in token)
        if byte := BYTE_FALLBACK_TOKEN.fullmatch(token):
            return bytes([int(byte[1], 16)])
        if isinstance(self.backend.model, models.WordPiece):
            token = token.removeprefix(self.backend.model.continuing_subword_prefix)
        return token.replace("\u2581", " ").encode()  # sentencepiece writes a space as '▁'

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The conversation as the one string the model was trained on; ends with the assistant's
        header when `add_generation_prompt`, so the model's next tokens are its reply."""
        return render_chat_template(self.chat_template, messages, add_generation_prompt, self.special_tokens)

    def save(self, folder: Path) -> None:
        """Write `tokenizer.json`, `lmlab_tokenizer.json` (roles, chat template), and a `tokenizer_config.json`
        so that transformers' `AutoTokenizer.from_pretrained(folder)` loads the same tokenizer."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_text(folder / TOKENIZER_FILE, self.backend.to_str(pretty=True))
        own = {"special_tokens": self.special_tokens, "chat_template": self.chat_template}
        write_text(folder / LMLAB_TOKENIZER_FILE, json.dumps(own, indent=2, ensure_ascii=False))
        hf_config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": False,
            **{f"{role}_token": token for role, token in self.special_tokens.items()},
            **({"chat_template": self.chat_template} if self.chat_template else {}),
        }
        write_text(folder / HF_CONFIG_FILE, json.dumps(hf_config, indent=2, ensure_ascii=False))

