"""One token per character, as nanoGPT's `shakespeare_char` run does."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.io import read_json, write_text
from lmlab.tokenizers.base import CHAR_TOKENIZER_FILE
from lmlab.tokenizers.chat_template import render_chat_template


@dataclass
class CharTokenizer:
    """One token per character, ids in sorted character order (nanoGPT's `shakespeare_char/prepare.py`).

    The vocabulary is every character of the training text and nothing else: no special tokens, and a
    character it never saw cannot be encoded.
    """

    chars: list[str]

    bos_id = eos_id = pad_id = unk_id = cls_id = sep_id = mask_id = None
    chat_template = None
    special_tokens: dict[str, str] = field(default_factory=dict, init=False)
    kind = "character-level"

    def __post_init__(self) -> None:
        self._index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        if not text:
            raise LmlabError("cannot build a character vocabulary from an empty text")
        return cls(sorted(set(text)))

    @classmethod
    def load(cls, path: Path) -> CharTokenizer:
        data = read_json(path)
        chars = data.get("chars")
        if data.get("kind") != "char" or not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
            raise LmlabError(f"{path} is not a character-level tokenizer file")
        return cls(chars)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        unknown = sorted(set(text) - self._index.keys())
        if unknown:
            raise LmlabError(f"characters not in this character-level vocabulary: {''.join(unknown)!r}")
        return [self._index[c] for c in text]

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(self.chars[i] for i in ids)

    def token_to_id(self, token: str) -> int | None:
        return self._index.get(token)

    def id_to_token(self, i: int) -> str | None:
        return self.chars[i] if 0 <= i < len(self.chars) else None

    def token_bytes(self, i: int) -> bytes:
        token = self.id_to_token(i)
        if token is None:
            raise LmlabError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
        return token.encode()

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return render_chat_template(None, messages, add_generation_prompt, {})

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        data = {"kind": "char", "chars": self.chars}
        write_text(folder / CHAR_TOKENIZER_FILE, json.dumps(data, indent=1, ensure_ascii=False))
