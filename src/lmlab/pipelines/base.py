"""What every task pipeline shares: one input or a list in, batches through the model, results out.

A pipeline (the idea of transformers' `pipeline`) hides three steps behind one
call: preprocess (text to padded token ids), the forward pass, postprocess
(logits to the answer a person reads). Each task module subclasses `Pipeline`
and writes `predict`, which takes a batch of checked inputs and returns one
result per input, shaped key for key as transformers' pipeline of the same name.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from lmlab.errors import LmlabError
from lmlab.generation.incremental import padding_id
from lmlab.hub.resolve import LoadedModel

PROGRESS_FROM = 32  # inputs; shorter lists run without a progress bar


@dataclass
class Batch:
    """Padded token ids of a batch and the tokenizer's encodings (offsets, word ids, special-token masks)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None
    encodings: list[Any]

    def model_inputs(self) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.token_type_ids is not None:
            inputs["token_type_ids"] = self.token_type_ids
        return inputs


def finetune_hint(task: str, model: str) -> str:
    """The one `lmlab finetune` command that gives a model the head a task needs."""
    data = {"token-classification": "train.conll", "question-answering": "train-squad.json",
            "classification": "train.csv", "pair-classification": "nli.jsonl"}[task]
    return f"`lmlab finetune {model} --task {task} --data {data} --out runs/{task}`, then use runs/{task}/model"


def require_head(loaded: LoadedModel, head: str, task: str, finetune_task: str, example_model: str = "minilm-l6"):
    """Raise one line naming the finetune command when the model lacks the head `task` needs."""
    have = loaded.model.config.head
    if have != head:
        model = loaded.reference if loaded.model.config.arch == "encoder" else example_model
        raise LmlabError(f"{loaded.reference} has no {head} head (it has {have!r}), which {task} needs; train one "
                         f"with {finetune_hint(finetune_task, model)}")


def require_tokenizer(loaded: LoadedModel) -> Any:
    if loaded.tokenizer is None:
        raise LmlabError(f"{loaded.reference} has no tokenizer, so it cannot read text; give a model saved with one")
    return loaded.tokenizer


def check_text(text: Any, what: str = "input") -> str:
    if not isinstance(text, str):
        raise LmlabError(f"the {what} must be text, not {type(text).__name__}")
    if not text.strip():
        raise LmlabError(f"the {what} is empty: give some text for the pipeline to read")
    return text


def pad_id(loaded: LoadedModel) -> int:
    """The token that fills padding (lmlab.generation.incremental.padding_id: one rule for every stage)."""
    return padding_id(loaded.model, loaded.tokenizer)


@contextmanager
def truncating(tokenizer: Any, max_length: int, strategy: str = "longest_first", stride: int = 0) -> Iterator[Any]:
    """The tokenizer's backend, cutting encodings to `max_length` tokens for the duration (special tokens
    kept, as transformers' `truncation=True`); what is cut goes to `encoding.overflowing`, in windows that
    overlap by `stride` tokens."""
    backend = tokenizer.backend
    backend.enable_truncation(max_length, stride=stride, strategy=strategy)
    try:
        yield backend
    finally:
        backend.no_truncation()


def encode(loaded: LoadedModel, texts: Sequence[str], pairs: Sequence[str] | None = None,
           strategy: str = "longest_first") -> Batch:
    """Texts (or text pairs) as one right-padded batch with the model's special tokens, cut to its window."""
    tokenizer = require_tokenizer(loaded)
    with truncating(tokenizer, loaded.model.config.max_seq_len, strategy) as backend:
        inputs = list(texts) if pairs is None else list(zip(texts, pairs))
        encodings = backend.encode_batch(inputs, add_special_tokens=True)
    width = max(len(e.ids) for e in encodings)
    fill = pad_id(loaded)
    ids = torch.tensor([e.ids + [fill] * (width - len(e.ids)) for e in encodings])
    mask = torch.tensor([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in encodings])
    types = None
    if loaded.model.config.type_vocab_size:
        types = torch.tensor([e.type_ids + [0] * (width - len(e.ids)) for e in encodings])
    return Batch(ids, mask, types, encodings)


class Pipeline:
    """A model ready for one task: call it with one input or a list of inputs."""

    task: str = ""

    def __init__(self, loaded: LoadedModel, batch_size: int = 8, progress: bool = True) -> None:
        if batch_size < 1:
            raise LmlabError(f"batch size must be at least 1, not {batch_size}")
        self.loaded = loaded
        self.model = loaded.model.eval()
        self.tokenizer = require_tokenizer(loaded)
        self.batch_size = batch_size
        self.progress = progress
        self.defaults: dict[str, Any] = {}  # options every call takes unless it says otherwise

    def is_single(self, inputs: Any) -> bool:
        """Whether `inputs` is one input (most tasks: a string) rather than a list of them."""
        return not isinstance(inputs, (list, tuple))

    def check(self, item: Any) -> Any:
        """One input, checked and put in the form `predict` takes."""
        return check_text(item)

    def predict(self, items: list[Any], **options: Any) -> list[Any]:
        raise NotImplementedError

    def describe(self) -> str:
        """The model and the method, in a few words (for `lmlab run` and the benchmark table)."""
        return f"{self.loaded.reference}"

    def __call__(self, inputs: Any, **options: Any) -> Any:
        options = {**self.defaults, **options}
        single = self.is_single(inputs)
        items = [self.check(item) for item in ([inputs] if single else list(inputs))]
        if not items:
            raise LmlabError("the input list is empty: give at least one input")
        results: list[Any] = []
        show = self.progress and len(items) >= PROGRESS_FROM
        with torch.inference_mode(), tqdm(total=len(items), desc=self.task, disable=not show, leave=False) as bar:
            for start in range(0, len(items), self.batch_size):
                chunk = items[start:start + self.batch_size]
                results += self.predict(chunk, **options)
                bar.update(len(chunk))
        return results[0] if single else results


__all__ = ["Batch", "Pipeline", "check_text", "encode", "finetune_hint", "pad_id", "require_head", "truncating"]
