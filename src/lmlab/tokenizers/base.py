"""What every lmlab tokenizer is: the protocol the rest of lmlab is typed against, the special-token roles,
and the names of the files a tokenizer is saved in."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

TOKENIZER_FILE = "tokenizer.json"
LMLAB_TOKENIZER_FILE = "lmlab_tokenizer.json"
CHAR_TOKENIZER_FILE = "lmlab_char_tokenizer.json"
HF_CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_KIND = "tokenizer"  # the kind of output folder lmlab.io marks

ROLES = ("bos", "eos", "pad", "unk", "cls", "sep", "mask")



@runtime_checkable
class TokenizerProtocol(Protocol):
    """Text to token ids and back, the ids of the special tokens, and the chat template: what generation,
    training, evaluation, fine-tuning, serving and export ask of a tokenizer (`Tokenizer`, `CharTokenizer`)."""

    special_tokens: dict[str, str]  # role (ROLES) -> token text
    chat_template: str | None

    @property
    def vocab_size(self) -> int: ...

    @property
    def kind(self) -> str: ...

    @property
    def bos_id(self) -> int | None: ...

    @property
    def eos_id(self) -> int | None: ...

    @property
    def pad_id(self) -> int | None: ...

    @property
    def unk_id(self) -> int | None: ...

    @property
    def cls_id(self) -> int | None: ...

    @property
    def sep_id(self) -> int | None: ...

    @property
    def mask_id(self) -> int | None: ...

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...

    def token_to_id(self, token: str) -> int | None: ...

    def id_to_token(self, i: int) -> str | None: ...

    def token_bytes(self, i: int) -> bytes: ...

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str: ...

    def save(self, folder: Path) -> None: ...
