"""Reading a GGUF file (llama.cpp's format): one memory-mapped reader for its key/value metadata and its
tensor table, shared by the model loader (lmlab.hub.gguf) and the tokenizer (lmlab.tokenizers.from_gguf)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf

from lmlab.errors import LmlabError, first_line


def open_gguf(path: str | Path) -> gguf.GGUFReader:
    """Memory-map a GGUF file and parse its metadata and tensor table; tensor data is not read."""
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"no such GGUF file: {path}")
    try:
        return gguf.GGUFReader(path)
    except (ValueError, OSError, KeyError, IndexError, UnicodeDecodeError) as err:
        raise LmlabError(f"{path} is not a readable GGUF file ({first_line(err)})") from None


def gguf_metadata(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    """The value of metadata `key` (decoded: numbers, strings, arrays as lists), or `default` when absent."""
    found = reader.get_field(key)
    return default if found is None else found.contents()
