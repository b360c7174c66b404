"""Learning a byte-level BPE vocabulary from text (Sennrich et al. 2016, arXiv:1508.07909; over the 256 byte
values as GPT-2 does, Radford et al. 2019) with the Hugging Face `tokenizers` trainer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from lmlab.errors import LmlabError
from lmlab.tokenizers.huggingface import DEFAULT_SPECIAL_TOKENS, SPECIAL_TOKEN_ROLES, Tokenizer


def train_bpe(
    files: list[Path],
    vocab_size: int,
    special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
    min_frequency: int = 2,
    show_progress: bool = True,
) -> Tokenizer:
    """Learn a byte-level BPE vocabulary of `vocab_size` tokens from text files (Sennrich et al. 2016).

    The vocabulary starts as the special tokens plus the 256 byte values; each merge then adds the
    most frequent adjacent pair (seen at least `min_frequency` times) as a new token, until the
    vocabulary is full or no pair is frequent enough. Text is first split GPT-2's way, so merges
    never cross a word boundary.
    """
    files = [Path(f) for f in files]
    if not files:
        raise LmlabError("no training files given")
    for path in files:
        if not path.is_file():
            raise LmlabError(f"no such training file: {path}")
    special_tokens = list(special_tokens)
    smallest = 256 + len(special_tokens)
    if vocab_size < smallest:
        raise LmlabError(
            f"vocab size {vocab_size} is too small: byte-level BPE needs the 256 byte values "
            f"plus {len(special_tokens)} special tokens, so at least {smallest}"
        )
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    corpus = _Corpus(files)
    backend.train_from_iterator(corpus.lines(), trainer=trainer)
    if corpus.characters == 0:
        raise LmlabError(f"the training corpus is empty: no text in {', '.join(map(str, files))}")
    roles: dict[str, str] = {}
    for token in special_tokens:
        for role in SPECIAL_TOKEN_ROLES.get(token, ()):
            roles.setdefault(role, token)
    return Tokenizer(backend, roles)


@dataclass
class _Corpus:
    """The lines of some UTF-8 text files, counting the non-blank characters seen."""

    files: list[Path]
    characters: int = 0

    def lines(self) -> Iterator[str]:
        for path in self.files:
            try:
                with path.open(encoding="utf-8") as f:
                    for line in f:
                        self.characters += len(line.strip())
                        yield line
            except UnicodeDecodeError:
                raise LmlabError(f"{path} is not UTF-8 text") from None

