"""Sentence embeddings from token vectors: mean pooling and L2 normalization.

Sentence-BERT (Reimers & Gurevych 2019, section 3) turns a sentence into one
vector by averaging the encoder's output vectors over its real tokens (padding
excluded): u = sum_t m_t h_t / sum_t m_t. all-MiniLM-L6-v2 then divides by the
L2 norm, u / ||u||, so that the dot product of two embeddings is their cosine
similarity. This is the one place lmlab pools; the pipelines and the server use it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T, d] token vectors and a [B, T] 0/1 mask -> [B, d], the mean over the real tokens."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def normalize(vectors: torch.Tensor) -> torch.Tensor:
    """Each row divided by its L2 norm (as sentence-transformers' Normalize module)."""
    return F.normalize(vectors, p=2, dim=-1)


__all__ = ["mean_pool", "normalize"]
