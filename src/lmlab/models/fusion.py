"""Fused projections for inference: one matrix product where the model does several on the same input.

An attention layer's query, key and value projections all read the same normed hidden state, and
so do the gate and up projections of a gated feed-forward block (SwiGLU). Stacking their weights
row-wise gives one linear layer whose output splits into the separate results, exactly:
[W_q; W_k; W_v] x = [W_q x; W_k x; W_v x]. Decoding one token then makes one call instead of three
(or two), with one output buffer and one pass over the input, and the rotary rotation of the
queries and keys runs once on both.

`fuse_projections` swaps the layers in place, at load or inference time only: the fused model's
state_dict still has the separate keys (q_proj, k_proj, v_proj, gate, up), split row-wise from the
fused tensors, and loading a state_dict with those keys fills the fused layers, so checkpoints keep
their format. Float layers are stacked; a quantized layer class that stores its weights row by row
fuses through its own `stack_rows(layers)` classmethod, which keeps the codes exactly (int8 per
channel, int4 groups: each row's codes and scales do not depend on the other rows), so a GGUF file's
Q4_1 blocks are fused as they are, with no dequantize-requantize round trip.
"""

from __future__ import annotations

import torch
from torch import nn

from lmlab.models.attention import Attention
from lmlab.models.feedforward import FeedForward

# (layer class, fused layer name, the separate layers it replaces)
FUSIONS = ((Attention, "qkv_proj", ("q_proj", "k_proj", "v_proj")), (FeedForward, "gate_up", ("gate", "up")))


def fuse_projections(model: nn.Module) -> int:
    """Fuse every self-attention's q/k/v and every gated feed-forward's gate/up whose layers are all plain
    nn.Linear or all of one quantized class with `stack_rows` (not LoRA-wrapped, not mixed); return how
    many layers were fused."""
    fused = 0
    for module in list(model.modules()):
        for kind, name, parts in FUSIONS:
            if not isinstance(module, kind) or getattr(module, name) is not None:
                continue
            layers = [getattr(module, part, None) for part in parts]
            stacked = _stack_rows(layers)
            if stacked is None:
                continue
            _replace(module, parts, name, stacked)
            module.register_state_dict_post_hook(_split_keys(name, parts, [l.out_features for l in layers]))
            module.register_load_state_dict_pre_hook(_join_keys(name, parts))
            fused += 1
    return fused


def _stack_rows(layers: list[nn.Module | None]) -> nn.Module | None:
    """One layer computing the outputs of `layers` one after another, or None if they cannot be fused."""
    kind = type(layers[0])
    if layers[0] is None or any(type(layer) is not kind for layer in layers):
        return None
    if kind is nn.Linear:
        return _stack(layers)
    stack_rows = getattr(kind, "stack_rows", None)
    return stack_rows(layers) if stack_rows is not None else None


def _replace(module: nn.Module, parts: tuple[str, ...], name: str, fused: nn.Linear) -> None:
    """Put `fused` where the first of `parts` was (so the model prints, and iterates, in the same order)
    and drop the parts."""
    setattr(module, name, fused)
    children = [(key, child) for key, child in module._modules.items() if key != name and key not in parts[1:]]
    module._modules.clear()
    module._modules.update((name, fused) if key == parts[0] else (key, child) for key, child in children)


def _stack(layers: list[nn.Linear]) -> nn.Linear:
    first = layers[0]
    bias = first.bias is not None
    out = nn.Linear(first.in_features, sum(l.out_features for l in layers), bias=bias, device="meta")
    out.weight = nn.Parameter(torch.cat([l.weight.detach() for l in layers]), requires_grad=first.weight.requires_grad)
    if bias:
        out.bias = nn.Parameter(torch.cat([l.bias.detach() for l in layers]), requires_grad=first.bias.requires_grad)
    return out


def _split_keys(name: str, parts: tuple[str, ...], sizes: list[int]):
    """Every tensor of the fused layer with one row per output (weight, bias, codes, scales), split back
    into the parts' keys."""
    def hook(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
        fused = f"{prefix}{name}."
        for key in [key for key in state_dict if key.startswith(fused)]:
            tensor = state_dict[key]
            if tensor.dim() == 0 or tensor.shape[0] != sum(sizes):
                continue
            kind = key.removeprefix(fused)
            for part, piece in zip(parts, state_dict.pop(key).split(sizes)):
                state_dict[f"{prefix}{part}.{kind}"] = piece.clone()
    return hook


def _join_keys(name: str, parts: tuple[str, ...]):
    def hook(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
        first = f"{prefix}{parts[0]}."
        for kind in [key.removeprefix(first) for key in state_dict if key.startswith(first)]:
            keys = [f"{prefix}{part}.{kind}" for part in parts]
            if all(key in state_dict for key in keys):
                state_dict[f"{prefix}{name}.{kind}"] = torch.cat([state_dict.pop(key) for key in keys])
    return hook
