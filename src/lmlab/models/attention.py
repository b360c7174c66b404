"""Scaled dot-product attention and the multi-head / grouped-query attention layer.

Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + M) V      (Vaswani et al. 2017, eq. 1)

M is an additive mask: 0 where a query may look at a key, a very large negative
number where it may not. Causal attention (decoders) masks the future,
bidirectional attention (encoders) masks only padding, cross-attention lets the
decoder's queries look at the encoder's keys and values.

Multi-head attention runs n_head attentions of width d_head side by side.
Grouped-query attention (Ainslie et al. 2023) lets groups of query heads share
one key/value head (n_kv_head < n_head), which shrinks the KV cache.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.config import ModelConfig
from lmlab.models.cache import KVCache, SlotCache
from lmlab.models.positions import apply_rotary


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook computation, returning the output and the attention weights.

    q: [B, H, Tq, d], k and v: [B, H, Tk, d], mask: additive, broadcastable to [B, H, Tq, Tk].
    Each row of the weights is a probability distribution over the keys.
    """
    scores = (q @ k.transpose(-2, -1)) * scale
    if mask is not None:
        scores = scores + mask
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return weights @ v, weights


def additive_mask(
    attention_mask: torch.Tensor | None, n_query: int, n_key: int, past: int, causal: bool, dtype: torch.dtype
) -> torch.Tensor | None:
    """Turn a padding mask [B, Tk] (1 = real token) and causality into an additive [B|1, 1, Tq, Tk] mask.

    Returns None when nothing needs masking (the fast paths of SDPA handle it).
    """
    allowed = None
    if causal and n_query > 1:
        query_pos = torch.arange(past, past + n_query, device=attention_mask.device if attention_mask is not None
                                 else "cpu")
        key_pos = torch.arange(n_key, device=query_pos.device)
        allowed = (key_pos[None, :] <= query_pos[:, None])[None, None]
    if attention_mask is not None:
        padding = attention_mask[:, None, None, :].bool()
        allowed = padding if allowed is None else allowed & padding
    if allowed is None:
        return None
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


class Attention(nn.Module):
    """Multi-head (or grouped-query) attention with an optional KV cache.

    Self-attention takes its keys and values from x; cross-attention takes them
    from `memory` (the encoder output), and caches them once per generation.
    """

    def __init__(self, config: ModelConfig, cross: bool = False) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.d_head = config.d_head
        self.cross = cross
        self.scale = 1.0 / math.sqrt(config.d_head) if config.scale_attention else 1.0
        self.dropout_p = config.dropout
        inner_q, inner_kv = config.n_head * config.d_head, config.n_kv_head * config.d_head
        self.q_proj = nn.Linear(config.d_model, inner_q, bias=config.bias)
        self.k_proj = nn.Linear(config.d_model, inner_kv, bias=config.bias)
        self.v_proj = nn.Linear(config.d_model, inner_kv, bias=config.bias)
        self.o_proj = nn.Linear(inner_q, config.d_model, bias=config.bias)
        self.qkv_proj: nn.Linear | None = None  # q, k and v in one layer, once lmlab.models.fusion has fused them

    def _heads(self, x: torch.Tensor, n_head: int) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, n_head, self.d_head).transpose(1, 2)

    def _keys_values(
        self, source: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None,
        cache: KVCache | SlotCache | None, layer: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cross and cache is not None and cache.cross[layer] is not None:
            return cache.cross[layer]
        k = self._heads(self.k_proj(source), self.n_kv_head)
        v = self._heads(self.v_proj(source), self.n_kv_head)
        if rotary is not None:
            k = apply_rotary(k, *rotary)
        if cache is not None:
            if self.cross:
                cache.cross[layer] = (k, v)
            else:
                k, v = cache.update(layer, k, v)
        return k, v

    def _fused_queries_keys_values(
        self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v from one product with the fused weights; the queries and keys rotated together."""
        batch, length, _ = x.shape
        heads = self.qkv_proj(x).view(batch, length, -1, self.d_head).transpose(1, 2)
        n_qk = self.n_head + self.n_kv_head
        qk = heads[:, :n_qk]
        if rotary is not None:
            qk = apply_rotary(qk, *rotary)
        return qk[:, : self.n_head], qk[:, self.n_head :], heads[:, n_qk:]

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        memory: torch.Tensor | None = None,
        cache: KVCache | SlotCache | None = None,
        layer: int = 0,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.qkv_proj is not None:
            q, k, v = self._fused_queries_keys_values(x, rotary)
            if cache is not None:
                k, v = cache.update(layer, k, v)
        else:
            q = self._heads(self.q_proj(x), self.n_head)
            if rotary is not None:
                q = apply_rotary(q, *rotary)
            k, v = self._keys_values(memory if self.cross else x, rotary, cache, layer)
        if need_weights:
            group = self.n_head // self.n_kv_head
            k_full = k.repeat_interleave(group, dim=1)
            v_full = v.repeat_interleave(group, dim=1)
            if is_causal:
                mask = additive_mask(None, q.shape[2], k.shape[2], k.shape[2] - q.shape[2], True, q.dtype)
            out, weights = scaled_dot_product_attention(q, k_full, v_full, mask, self.scale)
            batch, _, length, _ = out.shape
            out = out.transpose(1, 2).reshape(batch, length, self.n_head * self.d_head)
        else:
            out, weights = self._attend(q, k, v, mask, is_causal), None
        return self.o_proj(out), weights

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                is_causal: bool) -> torch.Tensor:
        """SDPA, returned as [B, T, n_head * d_head].

        With one query per row (a decode step) and grouped-query attention, the `group` query heads
        that share a key/value head are the same computation as `group` query rows of one head:
        q [B, n_head, 1, d] viewed as [B, n_kv_head, group, d] attends without repeating keys and
        values (a mask [B, 1, 1, Tk] broadcasts over the rows alike). On torch 2.13's CPU flash kernel
        this is faster in fp32 (23 against 35 us for SmolLM2's shapes) and slower in bf16 (30 against
        25 us), so it is taken in fp32 only.
        """
        batch, n_head, length, d_head = q.shape
        group = n_head // self.n_kv_head
        dropout_p = self.dropout_p if self.training else 0.0
        if (length == 1 and group > 1 and q.dtype == torch.float32
                and (mask is None or mask.shape[1] == mask.shape[2] == 1)):
            out = F.scaled_dot_product_attention(q.reshape(batch, self.n_kv_head, group, d_head), k, v,
                                                 attn_mask=mask, dropout_p=dropout_p, scale=self.scale)
            return out.reshape(batch, 1, n_head * d_head)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
                                             dropout_p=dropout_p, scale=self.scale, enable_gqa=group > 1)
        return out.transpose(1, 2).reshape(batch, length, n_head * d_head)
