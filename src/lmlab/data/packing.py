"""Pack token streams into fixed-length sequences, stored as memory-mapped shards with a JSON manifest.

Packing (as in GPT-2/GPT-3 and nanoGPT) concatenates every document's tokens,
each followed by the end-of-sequence token, into one stream and cuts it into
windows, so no compute is spent on padding. Sequence i of a split is the
``seq_len + 1`` tokens starting at ``i * seq_len``: the model reads the first
``seq_len`` and predicts the last ``seq_len`` (neighbouring windows share one
token). The validation split is the tail of the stream, as nanoGPT cuts
tinyshakespeare; shuffling documents before packing makes that tail a random
sample of the corpus.

On disk a prepared dataset is a folder::

    manifest.json          what is here: splits, shards, tokenizer, funnel, settings
    tokenizer/             the tokenizer that made the ids
    train-00000.bin ...    raw little-endian token ids (uint16 if the vocabulary
    validation-00000.bin   has fewer than 65536 entries, else uint32)

Each shard holds whole sequences plus the one shared token after them, so a
shard reads with ``numpy.memmap`` without looking at its neighbours.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lmlab.errors import LmlabError
from lmlab.io import read_json

MANIFEST = "manifest.json"
FORMAT = "lmlab.packed-tokens"
VERSION = 1
SPLITS = ("train", "validation")


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every id of a vocabulary."""
    return np.dtype(np.uint16 if vocab_size < 65536 else np.uint32)


def split_sequences(n_tokens: int, seq_len: int, val_fraction: float) -> tuple[int, int]:
    """Number of (train, validation) sequences of seq_len + 1 tokens that a stream of n_tokens makes."""
    total = (n_tokens - 1) // seq_len
    n_val = max(1, round(total * val_fraction)) if val_fraction > 0 else 0
    if total - n_val < 1:
        raise LmlabError(
            f"the corpus has {n_tokens} tokens after cleaning, too few for a training sequence of "
            f"{seq_len} tokens and a validation split; give more text or a smaller --seq-len"
        )
    return total - n_val, n_val


def write_split(stream: np.ndarray, folder: Path, split: str, seq_len: int, shard_tokens: int) -> dict[str, Any]:
    """Write `stream` (n * seq_len + 1 tokens) as shards of at most ~shard_tokens tokens; return its manifest entry."""
    n_sequences = (len(stream) - 1) // seq_len
    per_shard = max(1, shard_tokens // seq_len)
    shards = []
    for number, first in enumerate(range(0, n_sequences, per_shard)):
        count = min(per_shard, n_sequences - first)
        name = f"{split}-{number:05d}.bin"
        stream[first * seq_len : (first + count) * seq_len + 1].tofile(folder / name)
        shards.append({"file": name, "sequences": count, "tokens": count * seq_len + 1})
    return {"sequences": n_sequences, "tokens": n_sequences * seq_len + 1 if n_sequences else 0, "shards": shards}


class PackedDataset(Dataset):
    """The sequences of one split: item i is a LongTensor of seq_len + 1 token ids, read from memory-mapped shards."""

    def __init__(self, folder: str | Path, split_entry: dict[str, Any], seq_len: int, dtype: str):
        self.folder = Path(folder)
        self.seq_len = seq_len
        self.dtype = np.dtype(dtype)
        self.files = [self.folder / shard["file"] for shard in split_entry["shards"]]
        self.counts = [shard["sequences"] for shard in split_entry["shards"]]
        self.starts = np.cumsum([0, *self.counts])
        for path, count in zip(self.files, self.counts):
            expected = (count * seq_len + 1) * self.dtype.itemsize
            if not path.is_file():
                raise LmlabError(f"{path}: shard missing; prepare the dataset again")
            if path.stat().st_size != expected:
                size = path.stat().st_size
                raise LmlabError(f"{path}: {size} bytes, the manifest says {expected}; prepare the dataset again")
        self._maps: list[np.memmap] | None = None

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: int) -> torch.Tensor:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sequence {index} out of range for {len(self)} sequences")
        index %= len(self)
        if self._maps is None:  # opened on first use, so the dataset pickles cheaply into DataLoader workers
            self._maps = [np.memmap(path, dtype=self.dtype, mode="r") for path in self.files]
        shard = int(np.searchsorted(self.starts, index, side="right")) - 1
        start = (index - int(self.starts[shard])) * self.seq_len
        return torch.from_numpy(self._maps[shard][start : start + self.seq_len + 1].astype(np.int64))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": None}


@dataclass
class PreparedData:
    """A prepared dataset folder: its manifest and a PackedDataset per split."""

    path: Path
    manifest: dict[str, Any]
    train: PackedDataset
    validation: PackedDataset

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def seq_len(self) -> int:
        return self.manifest["seq_len"]

    @property
    def vocab_size(self) -> int:
        return self.manifest["vocab_size"]

    @property
    def tokenizer_path(self) -> Path:
        return self.path / self.manifest["tokenizer"]

    def load_tokenizer(self):
        """The tokenizer that produced the ids (lmlab.tokenizers.load_tokenizer on the saved copy)."""
        from lmlab.tokenizers import load_tokenizer

        return load_tokenizer(self.tokenizer_path)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a prepared dataset folder, or LmlabError saying why `path` is not one."""
    path = Path(path)
    if not path.is_dir():
        raise LmlabError(f"{path}: no such folder")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise LmlabError(f"{path}: not a prepared dataset (no {MANIFEST}); make one with `lmlab data prepare`")
    manifest = read_json(manifest_path, FORMAT, "an lmlab packed-token manifest")
    if manifest.get("version") != VERSION:
        version = manifest.get("version")
        raise LmlabError(f"{manifest_path}: format version {version}, this lmlab reads version {VERSION}")
    return manifest


def load_prepared(path: str | Path) -> PreparedData:
    """Open a folder written by `lmlab data prepare` (or `lmlab.data.pipeline.prepare`)."""
    path = Path(path)
    manifest = read_manifest(path)
    splits = {
        split: PackedDataset(path, manifest["splits"][split], manifest["seq_len"], manifest["dtype"])
        for split in SPLITS
    }
    return PreparedData(path=path, manifest=manifest, **splits)
