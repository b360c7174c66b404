"""Positional information: sinusoidal, learned, rotary, and T5's relative bias.

Self-attention is blind to order, so each family injects position its own way:

- sinusoidal (Vaswani et al. 2017, section 3.5): a fixed vector added to each
  token embedding, PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(...).
- learned (GPT-2, BERT): a trained embedding table indexed by position.
- rotary (Su et al. 2021, RoFormer): rotate each query/key pair of channels by an
  angle proportional to the position, so q·k depends only on the distance.
- relative (Raffel et al. 2020, T5): a learned scalar per head added to the
  attention logits, indexed by a log-spaced bucket of the distance key - query.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_table(n_positions: int, d_model: int) -> torch.Tensor:
    """The [n_positions, d_model] table of Vaswani et al.: sines on even channels, cosines on odd."""
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(n_positions, d_model)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq[: d_model // 2])
    return table


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal position vectors, looked up by position id (no parameters)."""

    def __init__(self, max_seq_len: int, d_model: int) -> None:
        super().__init__()
        self.max_seq_len, self.d_model = max_seq_len, d_model
        self.make_buffers()

    def make_buffers(self, device: torch.device | str | None = None) -> None:
        """(Re)compute the table; models built on the meta device call this once weights are loaded."""
        self.register_buffer("table", sinusoidal_table(self.max_seq_len, self.d_model).to(device), persistent=False)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.table[position_ids]


class RotaryEmbedding(nn.Module):
    """Cos/sin tables for rotary position embedding, in the half-split layout Llama uses.

    Channel i of the first half is paired with channel i of the second half and
    rotated by angle pos * theta^(-2i/d_head). The sine table is stored with its first half
    negated, so that the rotation is two products on the input and on the input rolled by half
    a head (apply_rotary): no slicing, negation or concatenation per call.
    """

    def __init__(self, d_head: int, max_seq_len: int, theta: float) -> None:
        super().__init__()
        self.d_head, self.max_seq_len, self.theta = d_head, max_seq_len, theta
        self.make_buffers()

    def make_buffers(self, device: torch.device | str | None = None) -> None:
        """(Re)compute the tables; models built on the meta device call this once weights are loaded."""
        with torch.device(device or "cpu"):
            exponents = torch.arange(0, self.d_head, 2, dtype=torch.int64).float() / self.d_head
            inv_freq = 1.0 / (self.theta**exponents)
            angles = torch.outer(torch.arange(self.max_seq_len, dtype=torch.float32), inv_freq)
            angles = torch.cat([angles, angles], dim=-1)
        sin = angles.sin()
        half = self.d_head // 2
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("signed_sin", torch.cat([-sin[:, :half], sin[:, half:]], dim=-1), persistent=False)

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (cos, signed sin) of shape [B, 1, T, d_head] for broadcasting over heads."""
        return self.cos[position_ids][:, None], self.signed_sin[position_ids][:, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate the channel pairs of x [B, H, T, d_head]: x*cos + rotate_half(x)*sin.

    rotate_half(x) = [-x2, x1] for the halves x1, x2 of x, so rotate_half(x)*sin equals
    [x2, x1] * [-sin1, sin2] = roll(x, half) * signed_sin, exactly (a negation is exact).
    """
    out = x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin
    return out if out.dtype == x.dtype else out.to(x.dtype)


def relative_position_bucket(
    relative_position: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """T5's bucketing of distance (key - query): exact for small distances, log-spaced up to max_distance.

    Bidirectional attention spends half the buckets on each direction; causal
    attention only sees the past, so all buckets go to non-positive distances.
    """
    bucket = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    log_ratio = torch.log(distance.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + (log_ratio * (num_buckets - max_exact)).long()).clamp(max=num_buckets - 1)
    return bucket + torch.where(distance < max_exact, distance, large)


class RelativePositionBias(nn.Module):
    """A learned bias per (bucket, head), added to attention logits (T5)."""

    def __init__(self, n_head: int, num_buckets: int, max_distance: int, bidirectional: bool) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional
        self.bias = nn.Embedding(num_buckets, n_head)

    def forward(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
        """Bias of shape [1, n_head, T_query, T_key]."""
        relative = key_positions[None, :] - query_positions[:, None]
        buckets = relative_position_bucket(relative, self.bidirectional, self.num_buckets, self.max_distance)
        return self.bias(buckets).permute(2, 0, 1)[None]
