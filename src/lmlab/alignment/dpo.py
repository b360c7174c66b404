"""Direct Preference Optimization (Rafailov et al. 2023, "Direct Preference Optimization: Your Language
Model is Secretly a Reward Model").

RLHF maximizes a reward under a KL penalty to a reference policy pi_ref; the
optimum of that problem is pi*(y|x) proportional to pi_ref(y|x) exp(r(x, y) / beta),
so a policy defines its own implicit reward

    r(x, y) = beta * log(pi_theta(y|x) / pi_ref(y|x))   (+ a term of x alone),

and putting it into the Bradley-Terry model of a preference (lmlab.alignment.reward)
gives a loss on the policy itself, no reward model and no sampling (the paper's equation 7):

    loss = -log sigma(beta * [log pi_theta(y_w|x) - log pi_ref(y_w|x)]
                      - beta * [log pi_theta(y_l|x) - log pi_ref(y_l|x)])

with log pi(y|x) the sum of the answer tokens' log-probabilities (TRL's
`loss_type="sigmoid"`). beta (0.1 by default, as in the paper and TRL) sets how
far the policy may move from the reference: smaller beta, weaker tie.

The reference log-probabilities of every pair are computed once, before
training, by the model as it starts (TRL's `precompute_ref_log_probs`): a LoRA
model starts as its base, and the adapters are switched off for the pass
(`lmlab.models.lora.adapters_disabled`), so no second copy of the model is
kept in memory. Evaluation reports what TRL logs: the implicit rewards of the
chosen and rejected answers, their accuracy (the share of pairs where the
chosen reward is higher) and mean margin, the log-probabilities of both, and,
for a LoRA model, the KL divergence to the reference per answer token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lmlab.alignment.preferences import PairCollator, PreferencePair, pair_batches
from lmlab.alignment.reward import is_reward_model
from lmlab.config import ModelConfig
from lmlab.data.collators import IGNORE_INDEX
from lmlab.errors import LmlabError
from lmlab.models.lora import adapters_disabled, lora_modules

DEFAULT_BETA = 0.1


def check_policy(config: ModelConfig, name: str, method: str = "DPO") -> None:
    """DPO and PPO train a model that writes text: a decoder with its language-modelling head."""
    if is_reward_model(config):
        raise LmlabError(f"{name} is a reward model (a scalar head, no language-modelling head): it cannot be "
                         f"aligned with {method}; give the language model to align (and a reward model to --reward "
                         "for ppo)")
    if not config.has_decoder or config.head != "lm" or config.arch != "decoder":
        raise LmlabError(f"{name} is not a decoder language model (arch {config.arch}, head {config.head}); "
                         "preference optimization trains a model that writes text, such as smollm2-135m-instruct")


def token_logps(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probability of each labelled token [n], the row of each [n]) of a `PairCollator` batch, in
    float32; the model's head computes the labelled positions only."""
    labels = batch["labels"]
    labelled = labels != IGNORE_INDEX
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   logits_mask=labelled).logits.float()
    logps = torch.gather(F.log_softmax(logits, -1), 1, labels[labelled].unsqueeze(1)).squeeze(1)
    return logps, labelled.nonzero()[:, 0]


def sequence_logps(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """log pi(y|x) of each row: the sum of its answer tokens' log-probabilities, [2B] (chosen rows, then
    rejected rows)."""
    logps, rows = token_logps(model, batch)
    return torch.zeros(batch["labels"].shape[0], device=logps.device).index_add(0, rows, logps)


@dataclass
class DPOOutput:
    """Per pair: the loss and the implicit rewards beta * log(pi_theta / pi_ref) of both answers."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float = DEFAULT_BETA) -> DPOOutput:
    """The DPO loss of each pair (equation 7 of the paper; see the module docstring)."""
    chosen_logratios = chosen_logps - ref_chosen_logps
    rejected_logratios = rejected_logps - ref_rejected_logps
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    return DPOOutput(losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach())


def dpo_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor], beta: float = DEFAULT_BETA) -> torch.Tensor:
    """The DPO loss summed over the batch's pairs (the trainer divides by the pairs of the step)."""
    if "reference_logps" not in batch:
        raise LmlabError("DPO needs the reference log-probabilities of every pair (cache_reference_logps)")
    chosen, rejected = sequence_logps(model, batch).chunk(2)
    ref_chosen, ref_rejected = batch["reference_logps"].to(chosen.dtype).chunk(2)
    return dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta).losses.sum()


@torch.no_grad()
def cache_reference_logps(model: nn.Module, pairs: Sequence[PreferencePair], pad_id: int, batch_size: int = 8,
                          dtype: str = "fp32", progress: bool = True) -> None:
    """Store log pi_ref(y|x) of both answers on every pair: the model as it is now (a LoRA model with its
    adapters off), in eval mode (no dropout)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    collator = PairCollator(pad_id)
    bar = tqdm(total=len(pairs), desc="reference log-probs", unit="pair", disable=not progress, dynamic_ncols=True)
    with adapters_disabled(model), torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
        for chunk, batch in pair_batches(pairs, collator, batch_size, device):
            batch.pop("reference_logps", None)
            chosen, rejected = sequence_logps(model, batch).chunk(2)
            for pair, c, r in zip(chunk, chosen.tolist(), rejected.tolist()):
                pair.reference_logps = (c, r)
            bar.update(len(chunk))
    bar.close()
    model.train(was_training)


@dataclass
class DPOScores:
    """What TRL's DPOTrainer logs, over held-out pairs (rewards are the implicit ones)."""

    loss: float
    accuracy: float
    margin: float
    chosen_reward: float
    rejected_reward: float
    chosen_logps: float
    rejected_logps: float
    kl: float | None  # LoRA: KL(pi_theta || pi_ref) per answer token, over the vocabulary; None without adapters

    def values(self) -> dict[str, float]:
        values = {"val_loss": self.loss, "accuracy": self.accuracy, "margin": self.margin,
                  "reward_chosen": self.chosen_reward, "reward_rejected": self.rejected_reward,
                  "logps_chosen": self.chosen_logps, "logps_rejected": self.rejected_logps}
        return values if self.kl is None else {**values, "kl": self.kl}


def _token_kl(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[float, int]:
    """Sum over the answer tokens of KL(pi_theta(.|context) || pi_ref(.|context)), and the token count."""
    labelled = batch["labels"] != IGNORE_INDEX
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "logits_mask": labelled}
    policy = F.log_softmax(model(**inputs).logits.float(), -1)
    with adapters_disabled(model):
        reference = F.log_softmax(model(**inputs).logits.float(), -1)
    return float((policy.exp() * (policy - reference)).sum()), int(labelled.sum())


@torch.no_grad()
def score_dpo(model: nn.Module, pairs: Sequence[PreferencePair], pad_id: int, beta: float = DEFAULT_BETA,
              batch_size: int = 8, dtype: str = "fp32") -> DPOScores:
    """DPO loss, implicit-reward accuracy and margin, log-probabilities and KL on `pairs` (whose reference
    log-probabilities are cached)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outputs, logps = [], []
    kl_sum, kl_tokens = 0.0, 0
    with_kl = bool(lora_modules(model))
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
        for _, batch in pair_batches(pairs, PairCollator(pad_id), batch_size, device):
            chosen, rejected = sequence_logps(model, batch).chunk(2)
            ref_chosen, ref_rejected = batch["reference_logps"].chunk(2)
            outputs.append(dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta))
            logps.append((chosen, rejected))
            if with_kl:
                total, count = _token_kl(model, batch)
                kl_sum, kl_tokens = kl_sum + total, kl_tokens + count
    model.train(was_training)
    chosen_r = torch.cat([o.chosen_rewards for o in outputs])
    rejected_r = torch.cat([o.rejected_rewards for o in outputs])
    return DPOScores(float(torch.cat([o.losses for o in outputs]).mean()), float((chosen_r > rejected_r).float().mean()),
                     float((chosen_r - rejected_r).mean()), float(chosen_r.mean()), float(rejected_r.mean()),
                     float(torch.cat([c for c, _ in logps]).mean()), float(torch.cat([r for _, r in logps]).mean()),
                     kl_sum / kl_tokens if with_kl else None)
