"""Fine-tuning data: records in, token sequences with their training targets out.

Three kinds of data file (JSONL, JSON or CSV, read by `lmlab.records`):

- prompt-completion (instruction tuning; Wei et al. 2021, FLAN; Ouyang et al.
  2022): each record is rendered into a prompt with a `PromptTemplate` (the same
  format the in-context-learning lab and `lmlab evaluate` prompt with, as plain
  text or as a user turn of the model's chat template), followed by the
  completion and the end-of-sequence token. The loss is on the completion's
  tokens only: the model learns to answer, not to write prompts.
- chat (`messages`: a list of {"role", "content"} turns): the conversation is
  rendered with the model's chat template and the loss is on the assistant
  turns only (as TRL's `assistant_only_loss` does).
- classification (`text`, `label`): label names become ids 0..K-1 in sorted
  order; the mapping travels with the model in `config.extra["id2label"]`.

Labels follow lmlab's convention: aligned with the logits, labels[t] is the
target of logits[t] (the token at t + 1), -100 where there is no loss.

A sequence longer than `max_length` tokens is shortened: a completion longer
than what its prompt leaves (and than half of `max_length`) loses its end, then
the prompt's input field is cut to fit (keeping its head, as `lmlab.prompting`
fits prompts into a context window); a chat is cut at the end, a text to
classify keeps its first tokens. Packing (Raffel et al. 2020, section 3.1.2; TRL's `packing=True`) joins
whole training sequences, each ending with its end-of-sequence token, into
rows of at most `max_length` tokens, so less of each batch is padding; the
sequences in a row can attend to each other (no block-diagonal mask), which
the end-of-sequence tokens between them make harmless in practice.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmlab.data.collators import IGNORE_INDEX
from lmlab.data.task_files import (answer_span, encode_pair, is_squad, read_conll, read_label_lines, read_squad,
                                   word_tags)
from lmlab.errors import LmlabError
from lmlab.prompting import PromptTemplate, build_prompt, template_fields
from lmlab.records import read_records
from lmlab.tokenizers.base import TokenizerProtocol

TASKS = ("generation", "classification", "pair-classification", "token-classification", "question-answering",
         "reward", "dpo")
PREFERENCE_TASKS = ("reward", "dpo")  # preference pairs: lmlab.alignment.preferences
LABELLED = ("classification", "pair-classification", "token-classification")  # tasks whose labels have names
ROLES = ("system", "user", "assistant")
MIN_INPUT_TOKENS = 4  # a cut prompt keeps room for a few tokens of its input and the "..." mark


@dataclass(frozen=True)
class DataFormat:
    """Which fields hold what, how a prompt is written, and how long a sequence may be.

    `template`: a format string over the record's fields (default: the prompt
    field alone, ``{prompt}``); `instruction` goes before it (a system turn in
    chat format). `chat`: None uses the tokenizer's chat template when it has
    one. A generation file whose records hold `messages_field` (and not the
    prompt field) is read as chat data.
    """

    task: str = "generation"
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    template: str | None = None
    instruction: str = ""
    messages_field: str = "messages"
    text_field: str = "text"
    pair_field: str = "text_pair"
    label_field: str = "label"
    chat: bool | None = None
    max_length: int = 512

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise LmlabError(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if self.max_length < 8:
            raise LmlabError(f"the maximum sequence length must be at least 8 tokens, not {self.max_length}")

    def prompt_template(self) -> PromptTemplate:
        return PromptTemplate(instruction=self.instruction, input_template=self.template or f"{{{self.prompt_field}}}",
                              input_field=self.prompt_field, target_field=self.completion_field)


@dataclass
class Example:
    """One training or evaluation sequence.

    tokens: the whole sequence (prompt then completion, a chat, or the text to classify).
    targets: generation only; True for the tokens the loss is on.
    label: classification only; the label id.
    prompt_length / reference: generation only; the first prompt_length tokens are what the model is
    given to write `reference` (the last completion), for scoring generated answers.
    """

    tokens: list[int]
    targets: list[bool] | None = None
    label: int | None = None
    prompt_length: int = 0
    reference: str = ""
    type_ids: list[int] | None = None  # segment ids of a text pair
    tags: list[int] | None = None  # token-classification: a label id per token, -100 for none
    span: tuple[int, int] | None = None  # question-answering: the answer's first and last token


@dataclass
class FinetuneData:
    """Tokenized training and validation examples and what was done to them."""

    task: str
    train: list[Example]
    validation: list[Example]
    labels: list[str] | None = None  # classification: label names, the id is the position
    truncated: int = 0
    packed_rows: int | None = None
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def max_tokens(self) -> int:
        return max(len(e.tokens) for e in self.train)

    @property
    def max_labelled(self) -> int:
        """Generation: the most positions with a label in one training sequence (the targets after the first)."""
        if self.task != "generation":
            return 0
        return max(sum(e.targets[1:]) for e in self.train)

    def id2label(self) -> dict[str, str]:
        return {str(i): name for i, name in enumerate(self.labels or [])}

    def describe(self) -> str:
        kinds = f"{len(self.train):,} training and {len(self.validation):,} validation examples"
        lengths = [len(e.tokens) for e in self.train]
        text = f"{kinds}; training sequences of {min(lengths)}-{max(lengths)} tokens (mean {np.mean(lengths):.0f})"
        if self.packed_rows is not None:
            text += f", packed from {self.source.get('unpacked', 0):,} examples"
        if self.truncated:
            text += f"; {self.truncated} example(s) cut to fit the maximum length"
        if self.labels and self.train[0].label is not None:
            counts = np.bincount([e.label for e in self.train], minlength=len(self.labels))
            text += "; labels " + ", ".join(f"{name} ({n})" for name, n in zip(self.labels, counts))
        return text


def _locations(path: Path, count: int) -> list[str]:
    """Where each record of a data file starts ('line N'; 'record N' in a JSON list), for error messages."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".jsonl":
        return [f"line {n}" for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if path.suffix.lower() == ".csv":
        reader = csv.reader(io.StringIO(text, newline=""))
        next(reader)
        places = []
        while len(places) < count:
            start = reader.line_num + 1
            if next(reader):
                places.append(f"line {start}")
        return places
    return [f"record {n}" for n in range(1, count + 1)]


@dataclass
class _Records:
    """A data file's records with the place of each, for one-line errors."""

    path: Path
    records: list[dict[str, Any]]
    places: list[str]

    @classmethod
    def read(cls, path: str | Path, required: Sequence[str]) -> _Records:
        path = Path(path)
        readers = {".conll": read_conll, ".txt": read_label_lines}
        if path.suffix.lower() in readers or is_squad(path):
            records, places = (read_squad if is_squad(path) else readers[path.suffix.lower()])(path)
            return cls(path, records, places)
        records = read_records(path, required)
        return cls(path, records, _locations(path, len(records)))

    def where(self, index: int) -> str:
        return f"{self.path.name} {self.places[index]}"

    def subset(self, indices: Sequence[int]) -> _Records:
        return _Records(self.path, [self.records[i] for i in indices], [self.places[i] for i in indices])


def _is_chat_data(records: _Records, fmt: DataFormat) -> bool:
    first = records.records[0]
    return fmt.messages_field in first and fmt.prompt_field not in first


def _required_fields(path: Path, fmt: DataFormat) -> list[str]:
    if fmt.task == "classification":
        return [fmt.text_field, fmt.label_field]
    if fmt.task == "pair-classification":
        return [fmt.text_field, fmt.pair_field, fmt.label_field]
    if fmt.task == "token-classification":
        return ["tokens", "tags"]
    if fmt.task == "question-answering":
        return ["question", "context", "answer_text", "answer_start"]
    first = read_records(path)[0]
    if fmt.messages_field in first and fmt.prompt_field not in first:
        return [fmt.messages_field]
    return [*template_fields(fmt.prompt_template().input_template), fmt.completion_field]


class _Encoder:
    """Token counting and encoding the way lmlab prompts a model: plain text with the tokenizer's special
    tokens, or chat messages through the chat template (which writes its own special tokens)."""

    def __init__(self, tokenizer: TokenizerProtocol, chat: bool | None, eos_id: int | None):
        has_template = getattr(tokenizer, "chat_template", None) is not None
        if chat and not has_template:
            raise LmlabError("this model's tokenizer has no chat template; fine-tune on plain-text prompts "
                             "(--no-chat)")
        self.tokenizer = tokenizer
        self.chat = has_template if chat is None else chat
        self.eos_id = eos_id

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)

    def prompt_ids(self, prompt: str | list[dict[str, str]]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=True)
        return self.tokenizer.encode(self.render(prompt, True))

    def completion_ids(self, prompt: str | list[dict[str, str]], completion: str) -> list[int]:
        """The answer's tokens as they follow the prompt: the text and the end-of-sequence token, or the
        rest of the chat template's rendering once the assistant's turn is added."""
        if isinstance(prompt, str):
            return self.tokenizer.encode(completion) + ([self.eos_id] if self.eos_id is not None else [])
        before = self.render(prompt, True)
        after = self.render([*prompt, {"role": "assistant", "content": completion}], False)
        if not after.startswith(before):
            raise LmlabError("the chat template does not render a conversation turn by turn (the prompt is not "
                             "a prefix of the conversation with the answer); use plain prompts (--no-chat)")
        return self.tokenizer.encode(after[len(before):])


def _text(value: Any, name: str, where: str) -> str:
    if isinstance(value, list):
        value = value[0] if value else ""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool) or str(value).strip() == "":
        raise LmlabError(f"{where}: field {name!r} must be non-empty text, not {value!r}")
    return str(value)


def _prompt_completion(records: _Records, fmt: DataFormat, encoder: _Encoder) -> tuple[list[Example], int]:
    template = fmt.prompt_template()
    examples, truncated = [], 0
    for i, record in enumerate(records.records):
        where = records.where(i)
        completion = _text(record[fmt.completion_field], fmt.completion_field, where)
        _text(record[fmt.prompt_field], fmt.prompt_field, where)
        query = {**record, fmt.completion_field: completion}
        plain = build_prompt(query, template=template, chat=encoder.chat).prompt
        answer = encoder.completion_ids(plain, completion)
        shortest_prompt = len(encoder.prompt_ids(build_prompt({**query, fmt.prompt_field: ""}, template=template,
                                                              chat=encoder.chat).prompt))
        room = fmt.max_length - shortest_prompt - MIN_INPUT_TOKENS
        if room < 1:
            raise LmlabError(f"{where}: the template and instruction alone take {shortest_prompt} tokens, too many "
                             f"for the maximum length of {fmt.max_length}")
        # The answer keeps what the whole prompt leaves, and at least half the length when the prompt is long.
        answer_room = min(room, max(fmt.max_length - len(encoder.prompt_ids(plain)), fmt.max_length // 2))
        cut_answer = len(answer) > answer_room
        answer = answer[:answer_room]
        fitted = build_prompt(query, template=template, chat=encoder.chat,
                              count_tokens=lambda p: len(encoder.prompt_ids(p)), budget=fmt.max_length - len(answer))
        truncated += cut_answer or fitted.truncated
        prompt = encoder.prompt_ids(fitted.prompt)
        examples.append(Example(prompt + answer, [False] * len(prompt) + [True] * len(answer),
                                prompt_length=len(prompt), reference=completion))
    return examples, truncated


def _check_messages(messages: Any, name: str, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise LmlabError(f"{where}: field {name!r} must be a non-empty list of messages")
    for number, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise LmlabError(f"{where}: message {number} must be an object with 'role' and 'content'")
        if message["role"] not in ROLES:
            raise LmlabError(f"{where}: message {number} has role {message['role']!r}; use {', '.join(ROLES)}")
        if not isinstance(message["content"], str):
            raise LmlabError(f"{where}: message {number}'s content must be text")
    if not any(m["role"] == "assistant" for m in messages):
        raise LmlabError(f"{where}: the conversation has no assistant turn to learn from")
    return messages


def _chat(records: _Records, fmt: DataFormat, encoder: _Encoder) -> tuple[list[Example], int]:
    """Each conversation rendered once, its text split at the assistant turns: tokens of the assistant's
    answers (and end-of-turn) are targets, everything else is context."""
    if not encoder.chat:
        raise LmlabError("chat data (a 'messages' field) needs a model whose tokenizer has a chat template")
    examples, truncated = [], 0
    for i, record in enumerate(records.records):
        where = records.where(i)
        messages = _check_messages(record[fmt.messages_field], fmt.messages_field, where)
        tokens: list[int] = []
        targets: list[bool] = []
        done = ""
        prompt_length = 0
        for turn, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = encoder.render(messages[:turn], True)
            after = encoder.render(messages[:turn + 1], False)
            if not (before.startswith(done) and after.startswith(before)):
                raise LmlabError(f"{where}: the chat template does not render this conversation turn by turn")
            context = encoder.tokenizer.encode(before[len(done):])
            answer = encoder.tokenizer.encode(after[len(before):])
            prompt_length = len(tokens) + len(context)
            tokens += context + answer
            targets += [False] * len(context) + [True] * len(answer)
            done = after
        reference = [m for m in messages if m["role"] == "assistant"][-1]["content"]
        if len(tokens) > fmt.max_length:
            tokens, targets = tokens[:fmt.max_length], targets[:fmt.max_length]
            truncated += 1
            if not any(targets):
                raise LmlabError(f"{where}: no assistant turn starts within the first {fmt.max_length} tokens; "
                                 "raise the maximum length")
        examples.append(Example(tokens, targets, prompt_length=min(prompt_length, len(tokens)), reference=reference))
    return examples, truncated


def _label_name(value: Any, name: str, where: str) -> str:
    if isinstance(value, (dict, list)) or value is None or str(value).strip() == "":
        raise LmlabError(f"{where}: field {name!r} must be a label name or number, not {value!r}")
    return str(value).strip()


def label_names(records: _Records, fmt: DataFormat) -> list[str]:
    """The training labels (token tags for token classification) in sorted order (numerically when they are
    all integers)."""
    if fmt.task == "token-classification":
        names = {_label_name(tag, "tags", records.where(i)) for i, r in enumerate(records.records) for tag in r["tags"]}
    else:
        names = {_label_name(r[fmt.label_field], fmt.label_field, records.where(i))
                 for i, r in enumerate(records.records)}
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _classification(records: _Records, fmt: DataFormat, tokenizer: TokenizerProtocol,
                    labels: list[str]) -> tuple[list[Example], int]:
    ids = {name: i for i, name in enumerate(labels)}
    sep = getattr(tokenizer, "sep_id", None)
    examples, truncated = [], 0
    for i, record in enumerate(records.records):
        where = records.where(i)
        label = _label_name(record[fmt.label_field], fmt.label_field, where)
        if label not in ids:
            raise LmlabError(f"{where}: label {label!r} does not occur in the training data "
                             f"(its labels: {', '.join(labels)})")
        text = _text(record[fmt.text_field], fmt.text_field, where)
        if fmt.task == "pair-classification":
            encoding, cut = encode_pair(tokenizer, text, _text(record[fmt.pair_field], fmt.pair_field, where),
                                        fmt.max_length)
            truncated += cut
            examples.append(Example(encoding.ids, label=ids[label], type_ids=encoding.type_ids))
            continue
        tokens = tokenizer.encode(text, add_special_tokens=True)
        if len(tokens) > fmt.max_length:
            keep_sep = sep is not None and tokens[-1] == sep
            tokens = tokens[:fmt.max_length - keep_sep] + ([sep] if keep_sep else [])
            truncated += 1
        examples.append(Example(tokens, label=ids[label]))
    return examples, truncated


def _tagged(records: _Records, fmt: DataFormat, tokenizer: TokenizerProtocol,
            labels: list[str]) -> tuple[list[Example], int]:
    ids = {name: i for i, name in enumerate(labels)}
    examples, truncated = [], 0
    for i, record in enumerate(records.records):
        where = records.where(i)
        words, tags = record["tokens"], record["tags"]
        if not isinstance(words, list) or not isinstance(tags, list) or len(words) != len(tags) or not words:
            raise LmlabError(f"{where}: 'tokens' and 'tags' must be lists of the same, non-zero length")
        unknown = [t for t in tags if str(t) not in ids]
        if unknown:
            raise LmlabError(f"{where}: tag {unknown[0]!r} does not occur in the training data "
                             f"(its tags: {', '.join(labels)})")
        tokens, token_tags, cut = word_tags(tokenizer, [str(w) for w in words], [ids[str(t)] for t in tags],
                                            fmt.max_length)
        truncated += cut
        examples.append(Example(tokens, tags=token_tags))
    return examples, truncated


def _questions(records: _Records, fmt: DataFormat, tokenizer: TokenizerProtocol) -> tuple[list[Example], int]:
    examples, truncated = [], 0
    for i, record in enumerate(records.records):
        where = records.where(i)
        context = _text(record["context"], "context", where)
        answer, start = str(record["answer_text"]), int(record["answer_start"])
        if context[start:start + len(answer)] != answer:
            raise LmlabError(f"{where}: the answer {answer!r} is not at character {start} of its context")
        encoding, cut = encode_pair(tokenizer, _text(record["question"], "question", where), context, fmt.max_length)
        span = answer_span(encoding, start, start + len(answer))
        truncated += cut
        examples.append(Example(encoding.ids, type_ids=encoding.type_ids, span=span))
    return examples, truncated


def split_indices(n: int, validation_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded random split of n records: (training indices, validation indices), each in file order."""
    if not 0 < validation_fraction < 1:
        raise LmlabError(f"the validation fraction must be between 0 and 1, not {validation_fraction:g}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * validation_fraction))
    return sorted(int(i) for i in order[n_val:]), sorted(int(i) for i in order[:n_val])


def pack(examples: Sequence[Example], max_length: int) -> list[Example]:
    """Join whole examples, in order, into rows of at most max_length tokens."""
    rows: list[Example] = []
    for example in examples:
        if rows and len(rows[-1].tokens) + len(example.tokens) <= max_length:
            rows[-1].tokens += example.tokens
            rows[-1].targets += example.targets
        else:
            rows.append(Example(list(example.tokens), list(example.targets)))
    return rows


def load_data(
    train: str | Path,
    fmt: DataFormat,
    tokenizer: TokenizerProtocol,
    validation: str | Path | None = None,
    validation_fraction: float = 0.1,
    seed: int = 0,
    packing: bool = False,
    eos_id: int | None = None,
) -> FinetuneData:
    """Read, check, split and tokenize fine-tuning data.

    Without a `validation` file a seeded `validation_fraction` of the training
    records is held out. Raises LmlabError (file and line) for a record missing
    a field, an empty value, a validation label the training data lacks, or an
    empty training set.
    """
    if tokenizer is None:
        raise LmlabError("this model has no tokenizer, so it cannot read text; fine-tune a checkpoint saved "
                         "with its tokenizer")
    train = Path(train)
    records = _Records.read(train, _required_fields(train, fmt))
    if validation is not None:
        val_records = _Records.read(validation, _required_fields(Path(validation), fmt))
    else:
        train_idx, val_idx = split_indices(len(records.records), validation_fraction, seed)
        records, val_records = records.subset(train_idx), records.subset(val_idx)
    if not records.records:
        raise LmlabError(f"{train.name}: the training set is empty (after holding out validation records)")
    labels = None
    if fmt.task in LABELLED:
        labels = label_names(records, fmt)
        if len(labels) < 2:
            raise LmlabError(f"{train.name}: {fmt.task} needs at least 2 labels; the training data has only "
                             f"{labels[0]!r}")
        read = _tagged if fmt.task == "token-classification" else _classification
        train_examples, truncated = read(records, fmt, tokenizer, labels)
        val_examples, _ = read(val_records, fmt, tokenizer, labels) if val_records.records else ([], 0)
    elif fmt.task == "question-answering":
        train_examples, truncated = _questions(records, fmt, tokenizer)
        val_examples = _questions(val_records, fmt, tokenizer)[0] if val_records.records else []
    else:
        encoder = _Encoder(tokenizer, fmt.chat, eos_id if eos_id is not None else tokenizer.eos_id)
        read = _chat if _is_chat_data(records, fmt) else _prompt_completion
        train_examples, truncated = read(records, fmt, encoder)
        val_examples = read(val_records, fmt, encoder)[0] if val_records.records else []
    data = FinetuneData(fmt.task, train_examples, val_examples, labels, truncated,
                        source={"train": str(train), "validation": str(validation) if validation else None,
                                "validation_fraction": None if validation else validation_fraction, "seed": seed})
    if packing:
        if fmt.task != "generation":
            raise LmlabError("packing joins generation examples; classification examples are not packed")
        order = np.random.default_rng(seed).permutation(len(train_examples))
        data.train = pack([train_examples[i] for i in order], fmt.max_length)
        data.packed_rows = len(data.train)
        data.source["unpacked"] = len(train_examples)
    return data


@dataclass
class Collator:
    """A batch from examples, padded on the right to the longest one.

    generation: input_ids = tokens[:-1], labels = tokens[1:] where the token is a target, else -100
    (aligned with the logits). classification and pair-classification: input_ids = tokens, labels = the
    label ids [B]. token-classification: labels = the tag of each token [B, T] (-100 where none).
    question-answering: labels = the answer's (first, last) token [B, 2]. Text pairs add token_type_ids.
    """

    task: str
    pad_id: int

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        if self.task != "generation":
            rows = [e.tokens for e in examples]
            if self.task == "token-classification":
                labels = _pad([e.tags for e in examples], IGNORE_INDEX)
            elif self.task == "question-answering":
                labels = torch.tensor([list(e.span) for e in examples])
            else:
                labels = torch.tensor([e.label for e in examples])
            batch = {"input_ids": _pad(rows, self.pad_id), "attention_mask": _pad([[1] * len(r) for r in rows], 0),
                     "labels": labels}
            if examples[0].type_ids is not None:
                batch["token_type_ids"] = _pad([e.type_ids for e in examples], 0)
            return batch
        rows = [e.tokens[:-1] for e in examples]
        labels = _pad([[t if keep else IGNORE_INDEX for t, keep in zip(e.tokens[1:], e.targets[1:])]
                       for e in examples], IGNORE_INDEX)
        return {"input_ids": _pad(rows, self.pad_id), "attention_mask": _pad([[1] * len(r) for r in rows], 0),
                "labels": labels}


def _pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)
