"""`prepare`: the whole data pipeline, from raw documents to packed token shards, with its funnel.

Read -> normalize -> quality-filter -> exact dedup -> near dedup -> tokenize and
pack (see :mod:`lmlab.data.cleaning` and :mod:`lmlab.data.packing`). Each step
records how many documents and tokens it kept: pre-training corpora keep only a
small share of what was scraped (the filtering and deduplication of RefinedWeb,
Penedo et al. 2023, Figure 2, remove almost 90% of CommonCrawl's documents),
and the funnel shows the user where their text went.

Token counts before the tokenize step are measured with the same tokenizer on
the text as it stands after each step (the raw text for "read"), so the column
reads in one unit throughout.

The output folder is written under a temporary name beside it and renamed at
the end: an interrupted run leaves no half-written dataset, and a folder that
already holds a different dataset is never touched.
"""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from lmlab.data.cleaning import MinHashDeduplicator, QualityRules, exact_key, normalize
from lmlab.data.packing import (
    FORMAT, MANIFEST, VERSION, PreparedData, load_prepared, read_manifest, split_sequences, token_dtype, write_split,
)
from lmlab.data.readers import corpus_files, read_documents
from lmlab.errors import LmlabError
from lmlab.io import recover, replace_folder, write_json
from lmlab.tokenizers import CharTokenizer, Tokenizer, load_tokenizer

DATASET_KIND = "dataset"  # the kind of output folder lmlab.io marks
CHAR = "char"  # the tokenizer spec for a character vocabulary built from the corpus itself
STEPS = ("read", "normalized", "quality-filtered", "exact-dedup", "near-dedup", "packed")


@dataclass
class PrepareSettings:
    """Everything that decides the content of a prepared dataset (it is part of the dataset's fingerprint)."""

    seq_len: int = 256
    val_fraction: float = 0.1
    text_field: str = "text"
    txt_split: str = "file"
    rules: QualityRules = field(default_factory=QualityRules)
    exact_dedup: bool = True
    near_dedup_threshold: float | None = 0.8
    shuffle: bool = True
    seed: int = 0
    shard_tokens: int = 1 << 24

    def check(self) -> None:
        if self.seq_len < 1:
            raise LmlabError(f"sequence length must be at least 1, got {self.seq_len}")
        if not 0 <= self.val_fraction < 1:
            raise LmlabError(f"validation fraction must be in [0, 1), got {self.val_fraction}")
        if self.near_dedup_threshold is not None and not 0 < self.near_dedup_threshold <= 1:
            raise LmlabError(f"near-duplicate threshold must be in (0, 1], got {self.near_dedup_threshold}")


@dataclass
class FunnelStep:
    step: str
    documents: int = 0
    tokens: int = 0


class _Funnel:
    def __init__(self) -> None:
        self.steps = {name: FunnelStep(name) for name in STEPS}
        self.removed_by: Counter[str] = Counter()

    def count(self, step: str, n_tokens: int, documents: int = 1) -> None:
        self.steps[step].documents += documents
        self.steps[step].tokens += n_tokens


def prepare(
    inputs: Sequence[str | Path],
    tokenizer: Tokenizer | CharTokenizer | str | Path,
    out: str | Path,
    settings: PrepareSettings | None = None,
    name: str | None = None,
    progress: bool = True,
) -> PreparedData:
    """Read the corpus files/folders in `inputs`, clean, tokenize and pack them into the folder `out`.

    `tokenizer` is a tokenizer, a path `load_tokenizer` reads, or "char" for a character vocabulary
    built from the corpus.
    """
    settings = settings or PrepareSettings()
    files = corpus_files(inputs)

    def documents() -> Iterable[str]:
        for path in files:
            yield from read_documents(path, settings.text_field, settings.txt_split)

    digest = hashlib.blake2b(digest_size=16)
    for path in files:
        digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    sources = [str(path) for path in files]
    return prepare_documents(documents(), tokenizer, out, settings, name, progress, sources, digest.hexdigest())


def prepare_documents(
    documents: Iterable[str],
    tokenizer: Tokenizer | CharTokenizer | str | Path,
    out: str | Path,
    settings: PrepareSettings | None = None,
    name: str | None = None,
    progress: bool = True,
    sources: Sequence[str] = ("documents given in Python",),
    source_digest: str | None = None,
) -> PreparedData:
    """Clean, tokenize and pack `documents` into `out`; return the prepared dataset.

    If `out` already holds the dataset these arguments make (same fingerprint:
    name, settings, documents, tokenizer), it is returned as it is; if it holds
    anything else, LmlabError.
    `source_digest` identifies the documents for the fingerprint; without it the
    documents are hashed as they are read.
    """
    settings = settings or PrepareSettings()
    settings.check()
    if isinstance(tokenizer, (str, Path)):
        if str(tokenizer) == CHAR:
            documents = list(documents)
            tokenizer = char_tokenizer(documents)
        else:
            tokenizer = load_tokenizer(tokenizer)
    out = Path(out)
    recover(out)
    if out.exists() and not out.is_dir():
        raise LmlabError(f"{out}: exists and is not a folder")
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer.save(Path(scratch))
        tokenizer_digest = _folder_digest(Path(scratch))
    if source_digest is None:
        documents = list(documents)
        source_digest = _digest(documents)
    name = name or out.name
    settings_json = json.dumps(_settings_record(settings), sort_keys=True)
    fingerprint = _digest([name, settings_json, source_digest, tokenizer_digest])
    if out.is_dir() and any(out.iterdir()):
        _check_same_dataset(out, fingerprint)
        return load_prepared(out)
    with replace_folder(out, DATASET_KIND) as work:
        tokenizer.save(work / "tokenizer")
        manifest = _run(documents, tokenizer, work, settings, progress)
        manifest.update(name=name, fingerprint=fingerprint, tokenizer_digest=tokenizer_digest, sources=list(sources))
        write_json(work / MANIFEST, manifest)
    return load_prepared(out)


def char_tokenizer(documents: Iterable[str]) -> CharTokenizer:
    """A character vocabulary with every character of the documents, as read and as normalized (nanoGPT's
    shakespeare_char builds its vocabulary from the text the same way)."""
    chars: set[str] = set()
    for document in documents:
        chars.update(document)
        chars.update(normalize(document))
    return CharTokenizer(sorted(chars))


def _run(
    documents: Iterable[str],
    tokenizer: Tokenizer | CharTokenizer,
    work: Path,
    settings: PrepareSettings,
    progress: bool,
) -> dict[str, Any]:
    """The pipeline proper: returns the manifest (without name and fingerprint) after writing the shards into `work`."""
    funnel = _Funnel()
    dtype = token_dtype(tokenizer.vocab_size)
    eos = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
    seen: set[bytes] = set()
    near = MinHashDeduplicator(settings.near_dedup_threshold) if settings.near_dedup_threshold else None
    kept: list[np.ndarray] = []
    for raw in tqdm(documents, desc="cleaning", unit="doc", disable=not progress):
        funnel.count("read", len(tokenizer.encode(raw, add_special_tokens=False)))
        text = normalize(raw)
        if not text:
            continue
        ids = tokenizer.encode(text, add_special_tokens=False)
        funnel.count("normalized", len(ids))
        failure = settings.rules.first_failure(text)
        if failure:
            funnel.removed_by[failure] += 1
            continue
        funnel.count("quality-filtered", len(ids))
        if settings.exact_dedup:
            key = exact_key(text)
            if key in seen:
                continue
            seen.add(key)
        funnel.count("exact-dedup", len(ids))
        if near is not None and near.is_duplicate(text):
            continue
        funnel.count("near-dedup", len(ids))
        kept.append(np.array(ids + eos, dtype=dtype))
    _check_kept(funnel)
    if settings.shuffle:
        random.Random(settings.seed).shuffle(kept)
    stream = np.concatenate(kept)
    n_train, n_val = split_sequences(len(stream), settings.seq_len, settings.val_fraction)
    boundary = n_train * settings.seq_len
    end = boundary + n_val * settings.seq_len
    splits = {
        split: write_split(part, work, split, settings.seq_len, settings.shard_tokens)
        for split, part in (("train", stream[: boundary + 1]), ("validation", stream[boundary : end + 1]))
    }
    funnel.count("packed", end + 1, documents=len(kept))
    return {
        "format": FORMAT,
        "version": VERSION,
        "seq_len": settings.seq_len,
        "dtype": dtype.name,
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "bos_id": tokenizer.bos_id,
        "pad_id": tokenizer.pad_id,
        "tokenizer": "tokenizer",
        "splits": splits,
        "funnel": [asdict(step) for step in funnel.steps.values()],
        "removed_by_rule": dict(funnel.removed_by.most_common()),
        "settings": _settings_record(settings),
    }


def _check_kept(funnel: _Funnel) -> None:
    read = funnel.steps["read"].documents
    if read == 0:
        raise LmlabError("the corpus is empty: no documents were read")
    if funnel.steps["near-dedup"].documents == 0:
        if funnel.steps["normalized"].documents == 0:
            raise LmlabError(f"every document read ({read}) is empty after normalization")
        rules = ", ".join(f"{rule}: {n}" for rule, n in funnel.removed_by.most_common())
        raise LmlabError(
            f"cleaning removed every document read ({read}; quality rules: {rules or 'none'}); "
            "relax --min-chars or the other filters, or check --text-field"
        )


def _settings_record(settings: PrepareSettings) -> dict[str, Any]:
    record = asdict(settings)
    for key in ("max_top_ngram_char_fraction", "max_duplicate_ngram_char_fraction"):
        record["rules"][key] = {str(n): v for n, v in record["rules"][key].items()}
    return record


def _digest(documents: Sequence[str]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for document in documents:
        digest.update(document.encode("utf-8") + b"\0")
    return digest.hexdigest()


def _folder_digest(folder: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _check_same_dataset(out: Path, fingerprint: str) -> None:
    if not (out / MANIFEST).is_file():
        raise LmlabError(f"{out}: folder is not empty and holds no prepared dataset; choose another output folder")
    if read_manifest(out).get("fingerprint") != fingerprint:
        raise LmlabError(
            f"{out}: already holds a different prepared dataset (other inputs, tokenizer or settings); "
            "choose another output folder or delete it"
        )


def format_funnel(manifest: dict[str, Any]) -> str:
    """The funnel as a table: documents and tokens kept by each step, and the share of the tokens read."""
    read_tokens = manifest["funnel"][0]["tokens"] or 1
    lines = [f"{'step':<18}{'documents':>12}{'tokens':>14}{'% tokens':>10}"]
    for step in manifest["funnel"]:
        share = 100 * step["tokens"] / read_tokens
        lines.append(f"{step['step']:<18}{step['documents']:>12,}{step['tokens']:>14,}{share:>9.1f}%")
    if manifest.get("removed_by_rule"):
        rules = ", ".join(f"{rule} {n}" for rule, n in manifest["removed_by_rule"].items())
        lines.append(f"quality rules removed: {rules}")
    return "\n".join(lines)
