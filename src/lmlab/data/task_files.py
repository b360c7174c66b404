"""Data for the heads that read text: sentence pairs (NLI), tagged tokens (NER), questions on a context (QA).

The files, in the formats the sets come in:
- classification: also `LABEL TEXT` lines in a .txt file (SST-2 as harvardnlp
  distributes it);
- pair-classification: records with a text, a second text and a label (SNLI:
  premise, hypothesis, entailment / neutral / contradiction); the pair is
  encoded as one sequence, [CLS] a [SEP] b [SEP] with segment ids 0 and 1
  (Devlin et al. 2018, section 3);
- token-classification: CoNLL files (a token and its BIO tag per line, a blank
  line between sentences; Tjong Kim Sang and De Meulder 2003) or records with
  `tokens` and `tags` lists. Words are split into sub-word tokens; the first
  token of each word carries the word's tag and the others none (-100), as
  BERT was fine-tuned for NER (Devlin et al. 2018, section 5.3);
- question-answering: SQuAD v1.1 JSON (Rajpurkar et al. 2016: data ->
  paragraphs -> context, qas -> question, answers[0] -> text, answer_start).
  [CLS] question [SEP] context [SEP], cut in the context; the labels are the
  answer's first and last token, or [CLS] (0, 0) when the cut removed it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmlab.data.collators import IGNORE_INDEX
from lmlab.errors import LmlabError
from lmlab.tokenizers.base import TokenizerProtocol

QUESTION_FIELDS = ("question", "context", "answer_text", "answer_start")


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise LmlabError(f"{path}: no such file") from None
    except UnicodeDecodeError as err:
        raise LmlabError(f"{path}: not valid UTF-8 text (byte {err.start})") from None


def read_label_lines(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """`LABEL TEXT` lines as {"label", "text"} records, with each one's line number."""
    records, places = [], []
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        label, _, text = line.strip().partition(" ")
        if not text.strip():
            raise LmlabError(f"{path.name} line {number}: expected 'LABEL TEXT', got {line.strip()[:40]!r}")
        records.append({"label": label, "text": text.strip()})
        places.append(f"line {number}")
    return records, places


def read_conll(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Sentences of a CoNLL file as {"tokens", "tags"} records, with the line each starts on."""
    records, places = [], []
    tokens: list[str] = []
    tags: list[str] = []
    start = 1
    for number, line in enumerate([*_lines(path), ""], start=1):
        if not line.strip():
            if tokens:
                records.append({"tokens": tokens, "tags": tags})
                places.append(f"line {start}")
            tokens, tags, start = [], [], number + 1
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) < 2:
            raise LmlabError(f"{path.name} line {number}: expected 'TOKEN<tab>TAG', got {line[:40]!r}")
        tokens.append(parts[0])
        tags.append(parts[-1])
    if not records:
        raise LmlabError(f"{path.name}: no sentences (CoNLL: a token and its tag per line)")
    return records, places


def is_squad(path: Path) -> bool:
    if path.suffix.lower() != ".json":
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and isinstance(data.get("data"), list)


def read_squad(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The questions of a SQuAD v1.1 file as records, each with its first answer and its article's number."""
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    records, places = [], []
    for article_number, article in enumerate(data, start=1):
        for paragraph in article.get("paragraphs", []):
            for qa in paragraph.get("qas", []):
                where = f"question {qa.get('id', len(records) + 1)}"
                answers = qa.get("answers") or []
                if not answers or "text" not in answers[0] or "answer_start" not in answers[0]:
                    raise LmlabError(f"{path.name} {where}: no answer with 'text' and 'answer_start'")
                records.append({"question": qa["question"], "context": paragraph["context"],
                                "answer_text": answers[0]["text"], "answer_start": int(answers[0]["answer_start"]),
                                "answers": [a["text"] for a in answers], "article": article_number,
                                "id": qa.get("id", "")})
                places.append(where)
    if not records:
        raise LmlabError(f"{path.name}: no questions (SQuAD: data -> paragraphs -> qas)")
    return records, places


def backend_of(tokenizer: TokenizerProtocol) -> Any:
    backend = getattr(tokenizer, "backend", None)
    if backend is None:
        raise LmlabError("this task needs a sub-word tokenizer with offsets (a tokenizer.json), not a character "
                         "tokenizer")
    return backend


def encode_pair(tokenizer: TokenizerProtocol, first: str, second: str, max_length: int) -> tuple[Any, bool]:
    """The encoding of a text pair cut to max_length (from the second text), and whether it was cut."""
    backend = backend_of(tokenizer)
    whole = backend.encode(first, second, add_special_tokens=True)
    if len(whole.ids) <= max_length:
        return whole, False
    backend.enable_truncation(max_length, strategy="only_second")
    try:
        return backend.encode(first, second, add_special_tokens=True), True
    finally:
        backend.no_truncation()


def word_tags(tokenizer: TokenizerProtocol, words: list[str], tags: list[int],
              max_length: int) -> tuple[list[int], list[int], bool]:
    """(token ids, a tag per token: the word's on its first token, -100 elsewhere, whether the sentence was cut)."""
    encoding = backend_of(tokenizer).encode(words, is_pretokenized=True, add_special_tokens=True)
    labels, previous = [], None
    for word in encoding.word_ids:
        labels.append(IGNORE_INDEX if word is None or word == previous else tags[word])
        previous = word
    ids = encoding.ids
    if len(ids) <= max_length:
        return ids, labels, False
    keep_last = encoding.special_tokens_mask[-1] == 1
    ids = ids[:max_length - keep_last] + ids[-1:] * keep_last
    labels = labels[:max_length - keep_last] + [IGNORE_INDEX] * keep_last
    return ids, labels, True


def answer_span(encoding: Any, start_char: int, end_char: int) -> tuple[int, int]:
    """The first and last token of the answer's characters in the context (sequence 1), or (0, 0)."""
    context = [i for i, s in enumerate(encoding.sequence_ids) if s == 1]
    if not context:
        return 0, 0
    offsets = encoding.offsets
    if offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return 0, 0
    first = next(i for i in context if offsets[i][1] > start_char)
    last = next(i for i in reversed(context) if offsets[i][0] < end_char)
    return first, last


__all__ = ["QUESTION_FIELDS", "answer_span", "encode_pair", "is_squad", "read_conll",
           "read_label_lines", "read_squad", "word_tags"]
