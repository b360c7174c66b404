"""One pre-training objective per architecture, and the loss every objective shares.

- decoder-only (GPT, Llama): causal language modelling, predict each next token;
- encoder-only (BERT): masked language modelling, predict the 15% of tokens
  that were masked (Devlin et al. 2018);
- encoder-decoder (T5): span corruption, write out the spans replaced by
  sentinel tokens (Raffel et al. 2020, section 3.1.4).

The collators themselves live in :mod:`lmlab.data.collators`; here each
architecture is matched with its collator, the tokenizer gets the tokens the
objective needs ([MASK] for BERT's objective, T5's sentinels ``<extra_id_N>``),
and the model config takes its vocabulary and special ids from the tokenizer.

Every collator labels the positions to predict (-100 elsewhere), so the loss
is the same for all: the sum of the cross-entropies over the labelled
positions, divided by the number of labelled positions in the whole step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import AddedToken

from lmlab.config import ModelConfig
from lmlab.data.collators import IGNORE_INDEX, CausalLMCollator, MaskedLMCollator, SpanCorruptionCollator
from lmlab.errors import LmlabError
from lmlab.tokenizers import Tokenizer
from lmlab.tokenizers.base import TokenizerProtocol

OBJECTIVES = {"decoder": "causal-lm", "encoder": "masked-lm", "encoder-decoder": "span-corruption"}
MASK_TOKEN = "<mask>"
PAD_TOKEN = "<|pad|>"
T5_SENTINELS = 100  # T5's vocabulary reserves <extra_id_0> ... <extra_id_99>


@dataclass
class Objective:
    """A training objective: its name, how to make a seeded collator for it, the sum of its loss over a
    batch and the count that sum is divided by (labelled tokens by default; preference pairs for reward
    models and DPO, `lmlab.alignment`), and the unit of the mean loss that gives (the loss plot's axis)."""

    name: str
    make_collator: Callable[[int], Callable[[list[Any]], dict[str, torch.Tensor]]]
    loss: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor] | None = None
    count: Callable[[dict[str, torch.Tensor]], int] | None = None
    unit: str = "nats per token"

    def __post_init__(self) -> None:
        self.loss = self.loss or loss_sum
        self.count = self.count or count_targets


def sentinel_token(n: int) -> str:
    return f"<extra_id_{n}>"


def sentinels_needed(seq_len: int, noise_density: float = 0.15, mean_span: float = 3.0) -> int:
    """Sentinels span corruption uses on `seq_len` tokens: one per noise span, and one after the last
    (T5's `random_spans_noise_mask` arithmetic)."""
    num_noise = min(max(round(seq_len * noise_density), 1), seq_len - 1)
    num_spans = min(max(round(num_noise / mean_span), 1), num_noise, seq_len - num_noise)
    return num_spans + 1


def _add_special(tokenizer: Tokenizer, tokens: list[str]) -> None:
    missing = [t for t in tokens if tokenizer.token_to_id(t) is None]
    if missing:
        tokenizer.backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])


def prepare_tokenizer(tokenizer: TokenizerProtocol, arch: str, seq_len: int) -> TokenizerProtocol:
    """The tokenizer with the special tokens `arch`'s objective needs, added at the end of the vocabulary.

    Token ids the data already holds keep their meaning; only new ids appear.
    A character-level tokenizer has no special tokens, so it only serves the
    causal objective.
    """
    if arch == "decoder":
        return tokenizer
    if not isinstance(tokenizer, Tokenizer):
        raise LmlabError(f"{OBJECTIVES[arch]} pre-training needs special tokens (padding, [MASK] or sentinels), "
                         f"which a {tokenizer.kind} tokenizer cannot hold; prepare the data with a BPE tokenizer")
    if tokenizer.pad_id is None:
        _add_special(tokenizer, [PAD_TOKEN])
        tokenizer.special_tokens["pad"] = PAD_TOKEN
    if arch == "encoder" and tokenizer.mask_id is None:
        _add_special(tokenizer, [MASK_TOKEN])
        tokenizer.special_tokens["mask"] = MASK_TOKEN
    if arch == "encoder-decoder":
        _add_special(tokenizer, [sentinel_token(n) for n in range(max(T5_SENTINELS, sentinels_needed(seq_len)))])
    return tokenizer


def model_config_for(config: ModelConfig, tokenizer: TokenizerProtocol) -> ModelConfig:
    """`config` with the tokenizer's vocabulary size and special ids (an encoder-decoder starts decoding
    from the padding id, as T5 does)."""
    changes: dict[str, Any] = {
        "vocab_size": tokenizer.vocab_size,
        "pad_token_id": tokenizer.pad_id,
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
    }
    if config.arch == "encoder-decoder":
        changes["decoder_start_token_id"] = tokenizer.pad_id
    return config.replace(**changes)


def objective_for(arch: str, tokenizer: TokenizerProtocol, seq_len: int) -> Objective:
    """The objective of `arch` over packed sequences of seq_len (+1) tokens; `tokenizer` as returned by
    `prepare_tokenizer`."""
    if arch == "decoder":
        return Objective(OBJECTIVES[arch], lambda seed: CausalLMCollator())
    if arch == "encoder":
        special = [i for i in (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.cls_id,
                               tokenizer.sep_id, tokenizer.mask_id) if i is not None]
        return Objective(OBJECTIVES[arch], lambda seed: MaskedLMCollator(
            tokenizer.vocab_size, tokenizer.mask_id, special, max_length=seq_len, seed=seed))
    if arch == "encoder-decoder":
        sentinels = [tokenizer.token_to_id(sentinel_token(n)) for n in range(sentinels_needed(seq_len))]
        return Objective(OBJECTIVES[arch], lambda seed: SpanCorruptionCollator(
            tokenizer.vocab_size, tokenizer.pad_id, tokenizer.eos_id, sentinel_ids=sentinels, max_length=seq_len,
            seed=seed))
    raise LmlabError(f"unknown architecture {arch!r}; choose from {', '.join(OBJECTIVES)}")


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    """Positions with a label (not -100): the denominator of the step's mean loss."""
    return int((batch["labels"] != IGNORE_INDEX).sum())


def loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the cross-entropies over the labelled positions (labels aligned with logits, -100 ignored),
    computed on float32 logits; a classifier's labels are one per sequence, an extractive QA head's
    are the answer's first and last token, each scored against the softmax over positions (Devlin et al.
    2018, section 4.2; the mean over the two is the loss per target).

    When only some positions carry a label (masked LM, completion-only fine-tuning), the model's head
    computes those positions alone (`logits_mask`): the same sum, without the vocabulary projection of
    the positions that do not count.
    """
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    labels = batch["labels"]
    if labels.dim() == 2:
        labelled = labels != IGNORE_INDEX
        if not bool(labelled.all()):
            logits = model(**inputs, logits_mask=labelled).logits
            return F.cross_entropy(logits.float(), labels[labelled], reduction="sum")
    logits = model(**inputs).logits  # [..., n_out] against labels [...]: per token, or per sequence
    if logits.dim() == 3 and labels.shape != logits.shape[:2]:  # a span head: [B, T, 2] against (start, end) [B, 2]
        return F.cross_entropy(logits.transpose(1, 2).reshape(-1, logits.shape[1]).float(), labels.reshape(-1),
                               reduction="sum")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
