"""Reading a tokenizer from its files (a Hugging Face or lmlab folder, a tokenizer.json, a character-level
vocabulary, a GGUF file), and writing one as a folder of its own."""

from __future__ import annotations

from pathlib import Path

import tokenizers

from lmlab.errors import LmlabError, first_line
from lmlab.io import read_json, replace_folder
from lmlab.tokenizers.base import (CHAR_TOKENIZER_FILE, HF_CONFIG_FILE, LMLAB_TOKENIZER_FILE, ROLES, TOKENIZER_FILE,
                                   TOKENIZER_KIND, TokenizerProtocol)
from lmlab.tokenizers.char import CharTokenizer
from lmlab.tokenizers.from_gguf import tokenizer_from_gguf
from lmlab.tokenizers.huggingface import Tokenizer


def load_tokenizer(path: str | Path) -> Tokenizer | CharTokenizer:
    """Load a tokenizer from a folder (Hugging Face `tokenizer.json` + `tokenizer_config.json`, one
    saved by lmlab, or a folder with one .gguf file), a `tokenizer.json` file, or a .gguf file."""
    path = Path(path)
    if not path.exists():
        raise LmlabError(f"no such tokenizer file or folder: {path}")
    if path.is_dir():
        if (path / CHAR_TOKENIZER_FILE).is_file():
            return CharTokenizer.load(path / CHAR_TOKENIZER_FILE)
        if (path / TOKENIZER_FILE).is_file():
            return _load_tokenizer_folder(path)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return tokenizer_from_gguf(ggufs[0])
        raise LmlabError(
            f"{path} holds no tokenizer: expected {TOKENIZER_FILE}, {CHAR_TOKENIZER_FILE} or one .gguf file"
        )
    if path.suffix == ".gguf":
        return tokenizer_from_gguf(path)
    if path.name == CHAR_TOKENIZER_FILE:
        return CharTokenizer.load(path)
    if path.name == TOKENIZER_FILE:
        return _load_tokenizer_folder(path.parent)
    if path.suffix == ".json":
        return Tokenizer(_read_backend(path))
    raise LmlabError(f"{path} is not a tokenizer: expected a folder, a .json tokenizer file or a .gguf file")


def _load_tokenizer_folder(folder: Path) -> Tokenizer:
    backend = _read_backend(folder / TOKENIZER_FILE)
    own = folder / LMLAB_TOKENIZER_FILE
    if own.is_file():
        data = read_json(own)
        return Tokenizer(backend, dict(data.get("special_tokens") or {}), data.get("chat_template"))
    config = read_json(folder / HF_CONFIG_FILE) if (folder / HF_CONFIG_FILE).is_file() else {}
    special_map_file = folder / "special_tokens_map.json"
    special_map = read_json(special_map_file) if special_map_file.is_file() else {}
    special_tokens = {}
    for role in ROLES:
        token = config.get(f"{role}_token") or special_map.get(f"{role}_token")
        token = token.get("content") if isinstance(token, dict) else token  # an AddedToken written out
        if isinstance(token, str):
            special_tokens[role] = token
    template = config.get("chat_template")
    if isinstance(template, list):  # several named templates: take the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default", next(iter(named.values()), None))
    if (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    return Tokenizer(backend, special_tokens, template)


def _read_backend(path: Path) -> tokenizers.Tokenizer:
    try:
        return tokenizers.Tokenizer.from_file(str(path))
    except Exception as err:  # the Rust library raises a bare Exception for any malformed file
        raise LmlabError(f"{path} is not a tokenizer.json the tokenizers library reads ({first_line(err)})") from None


def save_tokenizer_folder(tokenizer: TokenizerProtocol, out: Path) -> None:
    """Make `out` a folder holding just `tokenizer`, written in full and swapped in (lmlab.io.replace_folder),
    so no reader ever sees a half-written tokenizer. Replaces a tokenizer lmlab wrote there before."""
    with replace_folder(out, TOKENIZER_KIND, overwrite=True) as staging:
        tokenizer.save(staging)

