"""Normalization layers: LayerNorm (Ba et al. 2016) and RMSNorm (Zhang & Sennrich 2019).

LayerNorm re-centres and re-scales each token vector:
    y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias
RMSNorm drops the centring and the bias, which is cheaper and works as well in
practice (Llama, T5):
    y = x / sqrt(mean(x^2) + eps) * weight
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.config import ModelConfig


class RMSNorm(nn.Module):
    """Root-mean-square normalization, computed in float32 as Llama and T5 do.

    One call of torch's rms_norm, whose kernel upcasts a bf16 / fp16 input, normalizes and scales in
    float32 and rounds once. (Hugging Face's LlamaRMSNorm rounds the normalized vector to the input's
    dtype before the scaling, a second rounding; in fp32 the two are the same.) A weight of another
    dtype than the input's (mixed precision) takes the formula written out.
    """

    def __init__(self, d_model: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def make_norm(config: ModelConfig) -> nn.Module:
    """The normalization layer the config asks for."""
    if config.norm == "rmsnorm":
        return RMSNorm(config.d_model, config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps)
