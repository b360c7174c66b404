"""A decode step with few calls: the module path's arithmetic, run as one flat loop over the layers.

Decoding one token of a small model spends much of its time around the matrix products rather than in
them: a 30-layer model makes ~1,000 operator calls and ~2,000 `nn.Module` calls per token, and each
costs microseconds of Python and dispatch (benchmarks/bench_decode_step.py counts them). `DecodeStep`
gathers once, per model, what each decoder layer needs (its norms, fused projections, attention
kernel) and runs a decode pass over a `SlotCache` as one loop: no module calls, no per-layer branches
on the architecture, no keyword plumbing, no dropout identities, a residual stream of rows [B, d]
(no reshapes around each product), queries/keys/values split from the fused projection as views.

It computes what `Transformer.forward(ids, cache=slot_cache)` computes, with the same operations on
the same values in the same order, so the logits are bitwise equal in every dtype
(tests/models/test_decode_step.py). One operation is swapped for an equal one: a single row times a
bf16 `nn.Linear` is `torch.mv` (ATen's bf16 matrix-vector kernel, fp32 accumulation, as oneDNN's)
instead of `F.linear` (oneDNN's gemm, which for one bf16 row was slower than fp32's here); both
accumulate in fp32 and round once, and gave the same bits on SmolLM2's shapes.

It takes pre-norm decoders whose attention has fused q/k/v (`lmlab.models.fusion`) and no relative
bias or cross-attention, with a gated feed-forward fused into gate/up, or an ungated one: Llama and
GPT-2 families as the inference commands load them. `DecodeStep.build` returns None for anything else
(say, a LoRA-wrapped or unfused model), and the caller keeps the module path. The plan holds bound
methods of the model's layers, so it follows in-place weight updates but not swapped layers: build it
after the model is ready (the engine builds one per engine). Low-bit layers are called through their
kernel alone (`rows_function`: no reshapes or dtype checks), whose operands the plan holds: a plan
outlives no reloading of the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.models.attention import Attention
from lmlab.models.cache import SlotCache
from lmlab.models.positions import apply_rotary

Layer = Callable[[torch.Tensor], torch.Tensor]


def single_row_linear(linear: nn.Linear) -> Layer:
    """`linear` as a function; for bf16 weights, a one-row input goes through torch.mv (module docstring)."""
    if linear.weight.dtype != torch.bfloat16:
        return linear.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.numel() != x.shape[-1]:
            return F.linear(x, linear.weight, linear.bias)
        row = x.reshape(-1)
        y = torch.mv(linear.weight, row) if linear.bias is None else torch.addmv(linear.bias, linear.weight, row)
        return y.view(*x.shape[:-1], -1)

    return forward


def _as_function(module: nn.Module, dtype: torch.dtype) -> Layer:
    """`module` as a function of rows [n, in] of the activations' dtype: a bf16 nn.Linear through
    single_row_linear, a low-bit layer through its kernel alone when it offers one (`rows_function`),
    anything else through its forward."""
    if type(module) is nn.Linear:
        return single_row_linear(module)
    rows_function = getattr(module, "rows_function", None)
    function = rows_function(dtype) if rows_function is not None else None
    return function if function is not None else module.forward


@dataclass
class _DecoderLayer:
    attn_norm: Layer
    qkv: Layer
    attention: Attention
    o_proj: Layer
    ffn_norm: Layer
    gate_up: Layer | None  # None: an ungated feed-forward (up, act, down)
    up: Layer | None
    act: Layer
    down: Layer


class DecodeStep:
    """`step(ids [B, 1], cache)` -> logits [B, vocab] of a `SlotCache` decode pass (module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        stack = model.decoder
        self.model, self.stack = model, stack
        dtype = stack.final_norm.weight.dtype  # the activations' (the residual stream's) dtype
        self.layers = []
        for block in stack.layers:
            attn, ffn = block.attn, block.ffn
            self.layers.append(_DecoderLayer(
                block.attn_norm.forward, _as_function(attn.qkv_proj, dtype), attn, _as_function(attn.o_proj, dtype),
                block.ffn_norm.forward, _as_function(ffn.gate_up, dtype) if ffn.gate_up is not None else None,
                _as_function(ffn.up, dtype) if ffn.gate_up is None else None, ffn.act.forward,
                _as_function(ffn.down, dtype)))
        self.head_scale = model.head.scale
        self.head = _as_function(model.head.proj, dtype)

    @classmethod
    def build(cls, model: nn.Module) -> DecodeStep | None:
        """The plan for `model`, or None if its architecture is not one this loop runs."""
        return cls(model) if cls.unsupported(model) is None else None

    @staticmethod
    def unsupported(model: nn.Module) -> str | None:
        """Why `model` cannot decode through this loop, or None if it can."""
        c = model.config
        if c.arch != "decoder" or c.head != "lm" or type(model.head).__name__ != "LMHead":
            return "not a decoder-only language model"
        stack = model.decoder
        if stack.relative_bias is not None or stack.final_norm is None:
            return "a relative position bias, or post-norm blocks"
        for block in stack.layers:
            attn, ffn = block.attn, block.ffn
            if not block.pre_norm or block.cross_attn is not None:
                return "post-norm or cross-attention blocks"
            if attn.qkv_proj is None:
                return "q/k/v projections not fused (lmlab.models.fusion.fuse_projections)"
            if getattr(ffn, "gate", None) is not None and ffn.gate_up is None:
                return "gate/up projections not fused (lmlab.models.fusion.fuse_projections)"
        return None

    def __call__(self, ids: torch.Tensor, cache: SlotCache) -> torch.Tensor:
        batch = ids.shape[0]
        stack = self.stack
        positions, mask = cache.positions, cache.mask
        x = stack.embed(self.model.tok_emb(ids), positions, None).view(batch, -1)  # [B, d]: one token per row
        rotary = stack.rotary(positions) if stack.rotary is not None else None
        for i, layer in enumerate(self.layers):
            attn = layer.attention
            n_head, n_kv_head = attn.n_head, attn.n_kv_head
            heads = layer.qkv(layer.attn_norm(x)).view(batch, -1, 1, attn.d_head)  # [B, heads, T = 1, d_head]
            qk, v = heads.split([n_head + n_kv_head, n_kv_head], dim=1)
            if rotary is not None:
                qk = apply_rotary(qk, *rotary)
            q, k = qk.split([n_head, n_kv_head], dim=1)
            k, v = cache.update(i, k, v)
            x = x + layer.o_proj(attn._attend(q, k, v, mask, False).view(batch, -1))
            h = layer.ffn_norm(x)
            if layer.gate_up is not None:
                gate, up = layer.gate_up(h).chunk(2, dim=-1)
                h = layer.act(gate) * up
            else:
                h = layer.act(layer.up(h))
            x = x + layer.down(h)
        cache.advance(1)
        x = stack.final_norm(x)
        if self.head_scale != 1.0:
            x = x * self.head_scale
        return self.head(x)
