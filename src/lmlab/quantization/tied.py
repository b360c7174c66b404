"""The LM head of a tied model (Press & Wolf 2017) over a quantized embedding table, stored once.

The table is owned (registered) by the embedding only, so the state dict holds
it once and `.to(device)` moves it once; the head just reads it. BERT's tied
MLM head keeps its own bias. Subclasses say how to multiply by the table.
"""

from __future__ import annotations

import torch
from torch import nn


class TiedHead(nn.Module):
    """logits = x Êᵀ (+ b) with Ê the quantized token embedding `embedding`."""

    def __init__(self, embedding: nn.Module, bias: bool) -> None:
        super().__init__()
        object.__setattr__(self, "embedding", embedding)  # a reference, not a submodule
        device = embedding.qweight.device
        self.bias = nn.Parameter(torch.zeros(embedding.num_embeddings, device=device), False) if bias else None

    @classmethod
    def from_float(cls, linear: nn.Linear, embedding: nn.Module) -> TiedHead:
        head = cls(embedding, linear.bias is not None)
        if linear.bias is not None:
            head.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return head
