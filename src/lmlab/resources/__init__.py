"""Data files that ship inside lmlab, so its commands run on a fresh machine with no data of the user's.

- ``dialogues.jsonl``: 40 everyday dialogues written for lmlab, each with a
  reference summary, in the DialogSum format (Chen et al. 2021): fields ``id``,
  ``dialogue`` (turns ``#Person1#: ...`` / ``#Person2#: ...``), ``summary``
  and ``topic``. The default data of the in-context-learning lab.
- ``reviews.csv``: short product and restaurant reviews written for lmlab, with a
  ``text`` and a ``label`` (positive / negative) column.

`write_examples` copies them, with a text of the shipped pre-training corpus,
into a folder: the files the README's tour reads.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from lmlab.errors import LmlabError, did_you_mean
from lmlab.io import write_text


def resource_path(name: str) -> Path:
    """The path of the embedded data file `name`, e.g. resource_path("dialogues.jsonl")."""
    folder = resources.files(__name__)
    available = sorted(entry.name for entry in folder.iterdir() if entry.is_file() and not entry.name.endswith(".py"))
    if name not in available:
        raise LmlabError(f"no embedded data file {name!r}{did_you_mean(name, available)} (available: {', '.join(available)})")
    return Path(str(folder.joinpath(name)))


N_EVAL_DIALOGUES = 10
BOOK_DOCUMENTS = 400
CORPUS_DOCUMENTS = 100


def example_files() -> dict[str, str]:
    """The tour's data files by name: the shipped dialogues (all, and split into the first 30 for training and
    the last 10 for evaluation), the shipped reviews, and documents of the shipped corpus (as one text, and as
    a folder of one file per document)."""
    from lmlab.data.corpus import default_documents

    lines = [line for line in resource_path("dialogues.jsonl").read_text(encoding="utf-8").splitlines() if line]
    documents = default_documents(BOOK_DOCUMENTS)
    return {
        "dialogues.jsonl": "\n".join(lines) + "\n",
        "train.jsonl": "\n".join(lines[:-N_EVAL_DIALOGUES]) + "\n",
        "eval.jsonl": "\n".join(lines[-N_EVAL_DIALOGUES:]) + "\n",
        "reviews.csv": resource_path("reviews.csv").read_text(encoding="utf-8"),
        "book.txt": "\n\n".join(documents) + "\n",
        **{f"corpus/{i:03d}.txt": document + "\n" for i, document in enumerate(documents[:CORPUS_DOCUMENTS])},
    }


def write_examples(out: str | Path) -> tuple[list[Path], list[Path]]:
    """Write `example_files()` into `out`: (written, kept). A file that exists is kept as it is; each new one is
    written under a temporary name, then renamed."""
    written, kept = [], []
    for name, text in example_files().items():
        path = Path(out) / name
        if path.exists():
            kept.append(path)
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(path, text)
        except OSError as err:
            raise LmlabError(f"cannot write {path}: {err.strerror or err}") from None
        written.append(path)
    return written, kept
