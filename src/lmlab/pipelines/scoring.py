"""Scoring text with a causal language model: log P(continuation | prefix).

A causal LM factorizes a text's probability token by token,
log P(y_1..y_m | x) = sum_i log P(y_i | x, y_<i), read from one forward pass
over x followed by y: the logits at position t predict the token at t + 1.
Zero-shot classification by label likelihood, fill-mask without an MLM head and
the confidence of a generated answer are all this one sum.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from lmlab.models import Transformer


def _right_padded(rows: Sequence[list[int]], fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [fill] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask


@torch.inference_mode()
def continuation_logprobs(model: Transformer, pairs: Sequence[tuple[list[int], list[int]]], fill: int,
                          batch_size: int = 8) -> list[float]:
    """sum_i log P(continuation_i | prefix, continuation_<i) for each (prefix ids, continuation ids).

    A pair longer than the model's context window loses the prefix's oldest tokens (as generation with
    truncate=True does), keeping at least one; a continuation that alone does not fit is scored on the
    tokens that do."""
    window = model.config.max_seq_len
    pairs = [(prefix[-max(1, window - len(cont)):], cont[:window - 1]) for prefix, cont in pairs]
    scores: list[float] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        ids, mask = _right_padded([prefix + cont for prefix, cont in chunk], fill)
        logprobs = F.log_softmax(model(ids, attention_mask=mask).logits.float(), dim=-1)
        for row, (prefix, cont) in enumerate(chunk):
            positions = torch.arange(len(prefix) - 1, len(prefix) + len(cont) - 1)
            scores.append(float(logprobs[row, positions, torch.tensor(cont)].sum()))
    return scores


@torch.inference_mode()
def next_token_logprobs(model: Transformer, prefixes: Sequence[list[int]], fill: int,
                        batch_size: int = 8) -> torch.Tensor:
    """[N, vocab]: log P(next token | prefix) for each prefix."""
    rows = []
    for start in range(0, len(prefixes), batch_size):
        chunk = list(prefixes[start:start + batch_size])
        ids, mask = _right_padded(chunk, fill)
        logits = model(ids, attention_mask=mask).logits.float()
        last = torch.tensor([len(p) - 1 for p in chunk])
        rows.append(F.log_softmax(logits[torch.arange(len(chunk)), last], dim=-1))
    return torch.cat(rows)


__all__ = ["continuation_logprobs", "next_token_logprobs"]
