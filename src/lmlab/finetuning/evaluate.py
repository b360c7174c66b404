"""Scoring a model during and after fine-tuning: validation loss, and a task metric on a sample.

- validation loss: mean cross-entropy per target token (completion tokens, or
  one label per text), the quantity training minimizes;
- generation: greedy answers to the validation prompts, scored with ROUGE
  (Lin 2004; `lmlab.evaluation.metrics.rouge`, equal to `rouge-score`);
- classification: accuracy and macro-averaged F1 (each label's F1, averaged,
  so a rare label counts as much as a frequent one);
- preference pairs: a reward model's pairwise accuracy and margin, DPO's
  implicit-reward accuracy, margin, log-probabilities and KL (`lmlab.alignment`).

Early stopping (Prechelt 1998, "Early Stopping - But When?") watches one of
these after each evaluation and stops when it has not improved for `patience`
evaluations in a row; the weights of the best evaluation are kept.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lmlab.alignment.dpo import score_dpo
from lmlab.alignment.reward import score_pairs
from lmlab.data.finetune_data import Collator, Example
from lmlab.errors import LmlabError
from lmlab.evaluation.harness import PromptedModel
from lmlab.evaluation.metrics import accuracy, f1, rouge
from lmlab.generation import GenerationConfig
from lmlab.tokenizers.base import TokenizerProtocol
from lmlab.training.objectives import count_targets, loss_sum

METRICS = {"loss": ("generation", "classification", "pair-classification", "token-classification", "question-answering",
                    "reward", "dpo"),
           "rouge": ("generation",), "accuracy": ("classification", "pair-classification", "reward", "dpo"),
           "f1": ("classification", "pair-classification")}
HEADLINE = {"loss": "val_loss", "rouge": "rouge1", "accuracy": "accuracy", "f1": "f1"}


def check_metric(metric: str, task: str) -> None:
    if metric not in METRICS:
        raise LmlabError(f"unknown evaluation metric {metric!r}; choose from {', '.join(METRICS)}")
    if task not in METRICS[metric]:
        raise LmlabError(f"the {metric!r} metric does not score {task}; use "
                         f"{', '.join(m for m, tasks in METRICS.items() if task in tasks)}")


def higher_is_better(metric: str) -> bool:
    return metric != "loss"


def _batches(examples: Sequence[Example], batch_size: int) -> Iterator[Sequence[Example]]:
    for start in range(0, len(examples), batch_size):
        yield examples[start:start + batch_size]


def _autocast(model: nn.Module, dtype: str) -> contextlib.AbstractContextManager:
    device = next(model.parameters()).device.type
    return torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bf16")


def _on_device(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    device = next(model.parameters()).device
    return {key: value.to(device) for key, value in batch.items()}


@torch.no_grad()
def validation_loss(model: nn.Module, examples: Sequence[Example], collator: Collator, batch_size: int = 8,
                    dtype: str = "fp32") -> float:
    """Mean cross-entropy per target over `examples` (nats)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with _autocast(model, dtype):
        for batch in _batches(examples, batch_size):
            inputs = _on_device(model, collator(batch))
            total += float(loss_sum(model, inputs))
            count += count_targets(inputs)
    model.train(was_training)
    return total / count


@torch.no_grad()
def predict_labels(model: nn.Module, examples: Sequence[Example], collator: Collator, batch_size: int = 16,
                   dtype: str = "fp32") -> list[int]:
    """The most probable label id of each example."""
    was_training = model.training
    model.eval()
    predictions: list[int] = []
    with _autocast(model, dtype):
        for batch in _batches(examples, batch_size):
            inputs = {k: v for k, v in _on_device(model, collator(batch)).items() if k != "labels"}
            logits = model(**inputs).logits
            predictions += logits.reshape(-1, logits.shape[-1]).argmax(-1).tolist()  # [B, C] or [B, 1, C]
    model.train(was_training)
    return predictions


def generate_answers(model: nn.Module, tokenizer: TokenizerProtocol, examples: Sequence[Example],
                     max_new_tokens: int = 64, batch_size: int = 8) -> list[str]:
    """Greedy answers to each example's prompt (its first prompt_length tokens)."""
    was_training = model.training
    model.eval()
    prompted = PromptedModel.create(model, tokenizer, chat=False)
    answers = prompted.complete([e.tokens[:e.prompt_length] for e in examples],
                                GenerationConfig(max_new_tokens=max_new_tokens), batch_size)
    model.train(was_training)
    return answers


@dataclass
class Scores:
    """What one evaluation measured; `values` holds val_loss and the task metrics by name."""

    values: dict[str, float]
    predictions: list[str] | list[int] | None = None

    def format(self) -> str:
        return ", ".join(f"{name} {value:.4f}" for name, value in self.values.items())


def score(model: nn.Module, tokenizer: TokenizerProtocol, examples: Sequence[Example], collator: Collator, task: str,
          metric: str, sample: int | None = None, batch_size: int = 8, max_new_tokens: int = 64,
          dtype: str = "fp32", with_loss: bool = True, beta: float = 0.1) -> Scores:
    """Validation loss on every example (unless `with_loss` is false), and `metric` (besides loss) on the
    first `sample` examples. Preference pairs (reward, dpo) are all scored: loss, pairwise accuracy, margin
    (`lmlab.alignment`; `beta` is DPO's)."""
    if task == "reward":
        return Scores(score_pairs(model, examples, collator.pad_id, batch_size, dtype).values())
    if task == "dpo":
        return Scores(score_dpo(model, examples, collator.pad_id, beta, batch_size, dtype).values())
    values = {"val_loss": validation_loss(model, examples, collator, batch_size, dtype)} if with_loss else {}
    chosen = list(examples[:sample] if sample else examples)
    predictions = None
    if metric == "rouge":
        predictions = generate_answers(model, tokenizer, chosen, max_new_tokens, batch_size)
        values.update(rouge(predictions, [e.reference for e in chosen]))
    elif metric in ("accuracy", "f1"):
        predictions = predict_labels(model, chosen, collator, batch_size, dtype)
        references = [e.label for e in chosen]
        values["accuracy"] = accuracy(predictions, references)
        values["f1"] = f1(predictions, references, average="macro")
    return Scores(values, predictions)
