"""Reward models: a language model with a scalar head, trained to score the preferred answer higher.

The head reads the last token's hidden state and writes one number r(x, y)
(Ziegler et al. 2019; Ouyang et al. 2022, section 3.5: a 6B GPT-3 "with the
final unembedding layer removed", outputting a scalar). It is trained on
preference pairs with the Bradley-Terry model of a comparison (Bradley &
Terry 1952): the chance that answer y_w is preferred to y_l is
sigma(r(x, y_w) - r(x, y_l)), so the loss of a pair is

    loss = -log sigma(r(x, y_w) - r(x, y_l))

(Ouyang et al. 2022, equation 1; TRL's RewardTrainer). Only the difference of
two rewards matters: a reward model's scale and offset are arbitrary.
Evaluation reports the pairwise accuracy (the share of held-out pairs where
r(x, y_w) > r(x, y_l)) and the mean margin r(x, y_w) - r(x, y_l).

In lmlab a reward model is a `sequence-classification` head with one output,
named "reward" (as transformers' `AutoModelForSequenceClassification` with
`num_labels=1`, the reward models TRL trains).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.alignment.preferences import PairCollator, PreferencePair, pair_batches
from lmlab.config import ModelConfig
from lmlab.errors import LmlabError
from lmlab.data.finetune_data import _pad

REWARD_LABEL = "reward"


def is_reward_model(config: ModelConfig) -> bool:
    """True for a model (config) whose head writes one scalar reward."""
    return config.head == "sequence-classification" and config.num_labels == 1


def check_reward_model(model: nn.Module, name: str) -> None:
    if not is_reward_model(model.config):
        raise LmlabError(f"{name} is not a reward model (its head is {model.config.head!r}, not a scalar reward "
                         "head); train one with `lmlab finetune MODEL --task reward --data prefs.jsonl`")


def rewards(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen rewards [B], rejected rewards [B]) of a `PairCollator(scored="last")` batch, in float32."""
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    scores = model(**inputs).logits[:, 0].float()
    return scores.chunk(2)


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """-log sigma(r_chosen - r_rejected) per pair (see the module docstring)."""
    return -F.logsigmoid(chosen - rejected)


def reward_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The Bradley-Terry loss summed over the batch's pairs (the trainer divides by the pairs of the step)."""
    return bradley_terry_loss(*rewards(model, batch)).sum()


@dataclass
class PairwiseScores:
    """How a reward model ranks held-out pairs."""

    loss: float
    accuracy: float
    margin: float
    chosen: float  # mean reward of the chosen answers
    rejected: float

    def values(self) -> dict[str, float]:
        return {"val_loss": self.loss, "accuracy": self.accuracy, "margin": self.margin,
                "reward_chosen": self.chosen, "reward_rejected": self.rejected}


@torch.no_grad()
def score_pairs(model: nn.Module, pairs: Sequence[PreferencePair], pad_id: int, batch_size: int = 8,
                dtype: str = "fp32") -> PairwiseScores:
    """Bradley-Terry loss, pairwise accuracy and mean margin of `model` on `pairs`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chosen, rejected = [], []
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
        for _, batch in pair_batches(pairs, PairCollator(pad_id, scored="last"), batch_size, device):
            c, r = rewards(model, batch)
            chosen.append(c)
            rejected.append(r)
    model.train(was_training)
    c, r = torch.cat(chosen), torch.cat(rejected)
    return PairwiseScores(float(bradley_terry_loss(c, r).mean()), float((c > r).float().mean()),
                          float((c - r).mean()), float(c.mean()), float(r.mean()))


@torch.no_grad()
def score_texts(model: nn.Module, sequences: Sequence[Sequence[int]], pad_id: int,
                batch_size: int = 8) -> torch.Tensor:
    """The reward of each token sequence (prompt and answer), [N] float32."""
    was_training = model.training
    model.eval()
    device, out = next(model.parameters()).device, []
    for start in range(0, len(sequences), batch_size):
        rows = sequences[start:start + batch_size]
        ids, mask = _pad(rows, pad_id).to(device), _pad([[1] * len(r) for r in rows], 0).to(device)
        out.append(model(input_ids=ids, attention_mask=mask).logits[:, 0].float())
    model.train(was_training)
    return torch.cat(out)
