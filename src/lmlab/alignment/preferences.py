"""Preference data: pairs of answers to one prompt, one preferred (chosen) over the other (rejected).

Two record layouts, as TRL's preference datasets have them:

- `chosen` / `rejected` alone: two whole conversations that share their
  beginning, as Anthropic's HH-RLHF stores them (Bai et al. 2022):
  ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``. The turns both conversations share
  are the prompt; from the first assistant turn where they part, the rest of
  each is its completion.
- `prompt` / `chosen` / `rejected`: the prompt given (text, or a list of chat
  messages) and the two answers.

The prompt is written with the model's chat template when it has one (HH's
Human and Assistant turns become user and assistant messages), as plain text
otherwise; each answer's tokens are what follows the prompt (the chat
template's end-of-turn, or the end-of-sequence token). Only the completion is
scored: rewards and log-probabilities read the completion tokens, never the
shared prompt.

A pair whose two answers are the same, or whose conversations share no
prompt, is refused with its file and line. A pair longer than `max_length`
keeps its answers (cut to half the length at most when they must be) and the
end of its prompt, as TRL's `truncation_mode="keep_end"` does.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmlab.errors import LmlabError
from lmlab.data.finetune_data import IGNORE_INDEX, DataFormat, _check_messages, _pad, _Records, split_indices

CHOSEN, REJECTED = "chosen", "rejected"
HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}

Prompt = str | list[dict[str, str]]


@dataclass
class PreferencePair:
    """One prompt's tokens and the tokens of its two answers (what follows the prompt).

    `reference_logps`: the reference model's log-probabilities of (chosen, rejected), filled by DPO before
    training (`lmlab.alignment.dpo.cache_reference_logps`)."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    prompt_text: Prompt = ""
    reference_logps: tuple[float, float] | None = None

    @property
    def tokens(self) -> list[int]:  # the longer sequence, for the sizes the trainer reports
        return self.prompt + max(self.chosen, self.rejected, key=len)


@dataclass
class PreferenceData:
    """Tokenized training and validation pairs (the shape of `FinetuneData` the fine-tuning recipe reads)."""

    task: str
    train: list[PreferencePair]
    validation: list[PreferencePair]
    labels: list[str] | None = None
    truncated: int = 0
    source: dict[str, Any] = field(default_factory=dict)
    packed_rows: None = None

    @property
    def max_tokens(self) -> int:
        return max(len(p.tokens) for p in self.train)

    @property
    def max_labelled(self) -> int:
        return max(max(len(p.chosen), len(p.rejected)) for p in self.train)

    def describe(self) -> str:
        lengths = [len(p.tokens) for p in self.train]
        text = (f"{len(self.train):,} training and {len(self.validation):,} validation preference pairs; "
                f"sequences of {min(lengths)}-{max(lengths)} tokens (mean {np.mean(lengths):.0f})")
        if self.truncated:
            text += f"; {self.truncated} pair(s) cut to fit the maximum length"
        return text


def hh_turns(text: str) -> list[dict[str, str]]:
    """HH-RLHF's ``\\n\\nHuman: ...\\n\\nAssistant: ...`` text as chat messages (empty if it has no turns)."""
    parts = HH_TURN.split(text)
    return [{"role": HH_ROLES[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2)]


def split_conversations(chosen: str, rejected: str, where: str) -> tuple[list[dict[str, str]], list[dict[str, str]],
                                                                          list[dict[str, str]]]:
    """(prompt, chosen answer, rejected answer) as message lists: the turns both share, then each one's rest,
    which starts with the assistant turn where they part."""
    a, b = hh_turns(chosen), hh_turns(rejected)
    if not a or not b:
        raise LmlabError(f"{where}: 'chosen' and 'rejected' hold no Human/Assistant turns and the record has no "
                         "'prompt' field, so there is no shared prompt; give a 'prompt' field")
    if a == b:
        raise LmlabError(f"{where}: 'chosen' and 'rejected' are the same conversation; a preference needs two "
                         "different answers")
    shared = 0
    while shared < min(len(a), len(b)) and a[shared] == b[shared]:
        shared += 1
    if shared == 0 or a[shared - 1]["role"] != "user" or any(
            len(rest) == 0 or rest[0]["role"] != "assistant" for rest in (a[shared:], b[shared:])):
        raise LmlabError(f"{where}: 'chosen' and 'rejected' do not share a prompt (the conversations must be the "
                         "same up to a Human turn and part at the Assistant's answer)")
    return a[:shared], a[shared:], b[shared:]


def _answer(value: Any, name: str, where: str) -> str | list[dict[str, str]]:
    if isinstance(value, list):
        return _check_messages(value, name, where)
    if not isinstance(value, str):
        raise LmlabError(f"{where}: field {name!r} must be text or a list of messages, not {value!r}")
    return value


class PairEncoder:
    """Prompt and answer tokens the way the model reads them: the chat template when it has one (and
    `chat` is not False), plain text with the end-of-sequence token otherwise."""

    def __init__(self, tokenizer: Any, chat: bool | None, eos_id: int | None):
        has_template = getattr(tokenizer, "chat_template", None) is not None
        if chat and not has_template:
            raise LmlabError("this model's tokenizer has no chat template; use plain-text prompts (--no-chat)")
        self.tokenizer, self.chat, self.eos_id = tokenizer, has_template if chat is None else chat, eos_id

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt)

    def _plain(self, messages: list[dict[str, str]]) -> str:
        return "".join(f"\n\n{'Human' if m['role'] == 'user' else m['role'].title()}: {m['content']}"
                       for m in messages)

    def prompt(self, prompt: Prompt) -> tuple[list[int], Prompt]:
        """The prompt's tokens (ending where the answer starts) and the prompt as generation takes it."""
        if isinstance(prompt, list) and self.chat:
            return self.tokenizer.encode(self._render(prompt, True)), prompt
        text = prompt if isinstance(prompt, str) else self._plain(prompt) + "\n\nAssistant:"
        return self.tokenizer.encode(text, add_special_tokens=True), text

    def answer(self, prompt: Prompt, answer: str | list[dict[str, str]]) -> list[int]:
        if isinstance(prompt, list) and self.chat:
            turns = answer if isinstance(answer, list) else [{"role": "assistant", "content": answer}]
            before, after = self._render(prompt, True), self._render([*prompt, *turns], False)
            if not after.startswith(before):
                raise LmlabError("the chat template does not render a conversation turn by turn; use plain "
                                 "prompts (--no-chat)")
            return self.tokenizer.encode(after[len(before):])
        if isinstance(answer, list):
            text = answer[0]["content"] + self._plain(answer[1:])
        else:
            text = answer
        text = text if isinstance(prompt, str) or not text or text[0].isspace() else " " + text
        return self.tokenizer.encode(text) + ([self.eos_id] if self.eos_id is not None else [])


def encode_pair(record: dict[str, Any], fmt: DataFormat, encoder: PairEncoder, where: str) -> tuple[PreferencePair,
                                                                                                     bool]:
    """One record as a PreferencePair, and whether it was cut to `fmt.max_length`."""
    if fmt.prompt_field in record:
        prompt = record[fmt.prompt_field]
        if isinstance(prompt, list):
            prompt = _check_messages(prompt, fmt.prompt_field, where) if prompt else prompt
        if not isinstance(prompt, (str, list)) or not prompt:
            raise LmlabError(f"{where}: field {fmt.prompt_field!r} must be non-empty text or a list of messages")
        chosen, rejected = (_answer(record[name], name, where) for name in (CHOSEN, REJECTED))
        if chosen == rejected:
            raise LmlabError(f"{where}: 'chosen' and 'rejected' are the same answer; a preference needs two "
                             "different answers")
    else:
        for name in (CHOSEN, REJECTED):
            if not isinstance(record[name], str):
                raise LmlabError(f"{where}: field {name!r} must be a whole conversation as text when there is no "
                                 f"{fmt.prompt_field!r} field")
        prompt, chosen, rejected = split_conversations(record[CHOSEN], record[REJECTED], where)
    prompt_ids, prompt_text = encoder.prompt(prompt)
    answers = [encoder.answer(prompt, a) for a in (chosen, rejected)]
    if answers[0] == answers[1]:
        raise LmlabError(f"{where}: 'chosen' and 'rejected' give the same tokens; a preference needs two different "
                         "answers")
    longest = max(len(a) for a in answers)
    cut = len(prompt_ids) + longest > fmt.max_length
    if cut:
        room = max(fmt.max_length - len(prompt_ids), fmt.max_length // 2)
        answers = [a[:room] for a in answers]
        prompt_ids = prompt_ids[-(fmt.max_length - max(len(a) for a in answers)):]
    return PreferencePair(prompt_ids, answers[0], answers[1], prompt_text), cut


def read_pairs(records: _Records, fmt: DataFormat, encoder: PairEncoder) -> tuple[list[PreferencePair], int]:
    pairs, truncated = [], 0
    for i, record in enumerate(records.records):
        pair, cut = encode_pair(record, fmt, encoder, records.where(i))
        pairs.append(pair)
        truncated += cut
    return pairs, truncated


def load_preferences(train: str | Path, fmt: DataFormat, tokenizer: Any, validation: str | Path | None = None,
                     validation_fraction: float = 0.1, seed: int = 0, eos_id: int | None = None) -> PreferenceData:
    """Read, check, split and tokenize preference pairs (see the module docstring).

    Without a `validation` file a seeded `validation_fraction` of the pairs is held out."""
    if tokenizer is None:
        raise LmlabError("this model has no tokenizer, so it cannot read text; use a checkpoint saved with its "
                         "tokenizer")
    records = _Records.read(train, [CHOSEN, REJECTED])
    if validation is not None:
        val_records = _Records.read(validation, [CHOSEN, REJECTED])
    else:
        train_idx, val_idx = split_indices(len(records.records), validation_fraction, seed)
        records, val_records = records.subset(train_idx), records.subset(val_idx)
    if not records.records:
        raise LmlabError(f"{Path(train).name}: the training set is empty (after holding out validation pairs)")
    encoder = PairEncoder(tokenizer, fmt.chat, eos_id if eos_id is not None else tokenizer.eos_id)
    train_pairs, truncated = read_pairs(records, fmt, encoder)
    val_pairs = read_pairs(val_records, fmt, encoder)[0] if val_records.records else []
    return PreferenceData(fmt.task, train_pairs, val_pairs, truncated=truncated,
                          source={"train": str(train), "validation": str(validation) if validation else None,
                                  "validation_fraction": None if validation else validation_fraction, "seed": seed})


@dataclass
class PairCollator:
    """A batch of pairs as one batch of 2B sequences, the B chosen rows first, then the B rejected rows
    (TRL's layout), padded on the right.

    `scored="completion"` (DPO): input_ids = tokens[:-1] and labels = tokens[1:] on the answer's tokens,
    -100 elsewhere (aligned with the logits), and `reference_logps` [2B] when the pairs carry them.
    `scored="last"` (reward models): the whole sequences, no labels; the reward is read at the last token.
    """

    pad_id: int
    scored: str = "completion"

    def __call__(self, pairs: Sequence[PreferencePair]) -> dict[str, torch.Tensor]:
        answers = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        prompts = [p.prompt for p in pairs] * 2
        if self.scored == "last":
            rows = [prompt + answer for prompt, answer in zip(prompts, answers)]
            return {"input_ids": _pad(rows, self.pad_id), "attention_mask": _pad([[1] * len(r) for r in rows], 0)}
        rows = [(prompt + answer)[:-1] for prompt, answer in zip(prompts, answers)]
        labels = [[IGNORE_INDEX] * (len(prompt) - 1) + answer for prompt, answer in zip(prompts, answers)]
        batch = {"input_ids": _pad(rows, self.pad_id), "attention_mask": _pad([[1] * len(r) for r in rows], 0),
                 "labels": _pad(labels, IGNORE_INDEX)}
        if all(p.reference_logps is not None for p in pairs):
            batch["reference_logps"] = torch.tensor([p.reference_logps[0] for p in pairs] +
                                                    [p.reference_logps[1] for p in pairs], dtype=torch.float32)
        return batch


def pair_batches(pairs: Sequence[PreferencePair], collator: PairCollator, batch_size: int, device: torch.device):
    """(the pairs, their collated batch on `device`), `batch_size` pairs at a time."""
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        yield chunk, {k: v.to(device) for k, v in collator(chunk).items()}


def count_pairs(batch: dict[str, torch.Tensor]) -> int:
    """Pairs in a batch: the denominator of a preference loss's mean."""
    return batch["input_ids"].shape[0] // 2
