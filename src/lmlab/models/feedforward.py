"""The position-wise feed-forward block (Vaswani et al. 2017, section 3.3).

Plain:  FFN(x) = down(act(up(x)))              (Transformer, BERT, GPT-2, T5 v1.0)
Gated:  FFN(x) = down(act(gate(x)) * up(x))    (Shazeer 2020, "GLU Variants Improve
        Transformer": SwiGLU in Llama, GeGLU in T5 v1.1 / Flan-T5)
"""

from __future__ import annotations

import torch
from torch import nn

from lmlab.config import ModelConfig


def activation_fn(name: str) -> nn.Module:
    """The element-wise non-linearity; 'gelu_tanh' is GPT-2's tanh approximation of GELU."""
    return {
        "relu": nn.ReLU(),
        "gelu": nn.GELU(),
        "gelu_tanh": nn.GELU(approximate="tanh"),
        "geglu": nn.GELU(approximate="tanh"),
        "silu": nn.SiLU(),
        "swiglu": nn.SiLU(),
    }[name]


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.gate = nn.Linear(config.d_model, config.d_ff, bias=config.bias) if config.gated else None
        self.down = nn.Linear(config.d_ff, config.d_model, bias=config.bias)
        self.gate_up: nn.Linear | None = None  # gate and up in one layer, once lmlab.models.fusion has fused them
        self.act = activation_fn(config.activation)
        self.dropout = dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up is not None:
            gate, up = self.gate_up(x).chunk(2, dim=-1)
            hidden = self.act(gate) * up
        elif self.gate is not None:
            hidden = self.act(self.gate(x)) * self.up(x)
        else:
            hidden = self.act(self.up(x))
        return self.down(self.dropout(hidden))



def dropout(p: float) -> nn.Module:
    """Dropout with probability p; with p = 0 an identity, which costs nothing per call."""
    return nn.Dropout(p) if p > 0 else nn.Identity()
