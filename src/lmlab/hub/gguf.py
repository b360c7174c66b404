"""Read Llama-family GGUF files (llama.cpp's format) into lmlab, as float or low-bit weights.

A GGUF file holds metadata (architecture hyper-parameters, the tokenizer, the
chat template) and tensors, often quantized in blocks (Q4_1: 32 weights share a
float16 scale and minimum, each weight is 4 bits). lmlab renames the tensors and
undoes one layout change: llama.cpp's converter interleaves the rotary halves of
the q and k projections, which we permute back to the half-split layout of
`lmlab.models.positions` (a permutation of rows, so it applies to blocks too).

`state_dict_from_gguf` dequantizes every tensor to fp32 (the `gguf` package's
dequantizer). `model_from_gguf` builds an int8 or int4 model tensor by tensor,
never holding the fp32 model (llama.cpp's block formats: ggml-common.h):

- Q4_1, per block of 32: fp16 d and m, 16 bytes of codes (byte j holds weight j
  in its low nibble and weight j + 16 in its high one); w = d·q + m. With
  --dtype int4 it maps exactly onto an int4 group of 32:
  w = (q - 8)·d + (m + 8d), scale d and offset m + 8d.
- Q4_0, per block of 32: fp16 d and the same codes; w = d·(q - 8): int4 group of
  32, scale d, offset 0, exactly.
  (The int4 kernel keeps scales and offsets in bf16, so d and m lose their last
  3 bits, 2^-9 relative: far below the 4-bit step.)
- Q8_0, per block of 32: fp16 d and 32 int8 codes; w = d·q. lmlab's int8 kernel
  takes one scale per row, not per block of 32, so a Q8_0 matrix is dequantized
  and quantized again per channel (absmax): one more rounding, at most half a
  step of the new grid.
- Any other type (F32, F16, K-quants, ...), and Q4 blocks under --dtype int8:
  dequantized, one tensor at a time, and quantized.
The token embedding and the LM head of an int4 model are int8 per channel.
SmolLM2-135M's file holds its 210 matrices as Q4_1, the token embedding (which
is also the tied LM head) as Q8_0, and the norms as F32.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from torch import nn

from lmlab.config import ModelConfig
from lmlab.errors import LmlabError
from lmlab.gguf_file import gguf_metadata
from lmlab.models import Transformer
from lmlab.quantization.int4 import Int4Linear, Int4Spec, Int4Tensor, int4_shape_problem, quantize_int4
from lmlab.quantization.quantized_linear import INT8_CHANNEL, QuantizedEmbedding, QuantizedLinear, TiedQuantizedLinear
from lmlab.quantization.schemes import QuantSpec, quantize

__all__ = ["config_from_gguf", "model_from_gguf", "state_dict_from_gguf"]
BLOCK = 32  # weights per block of Q4_0, Q4_1 and Q8_0

_TENSOR_NAMES = {
    "attn_q": "attn.q_proj", "attn_k": "attn.k_proj", "attn_v": "attn.v_proj", "attn_output": "attn.o_proj",
    "ffn_gate": "ffn.gate", "ffn_up": "ffn.up", "ffn_down": "ffn.down", "attn_norm": "attn_norm",
    "ffn_norm": "ffn_norm",
}


def config_from_gguf(reader) -> ModelConfig:
    arch = gguf_metadata(reader, "general.architecture")
    if arch != "llama":
        raise LmlabError(f"GGUF architecture {arch!r} is not supported (lmlab reads llama-family GGUF files)")

    def get(key: str, default: Any = None) -> Any:
        value = gguf_metadata(reader, f"llama.{key}", default)
        if value is None:
            raise LmlabError(f"GGUF file lacks the metadata key llama.{key}")
        return value

    n_head = int(get("attention.head_count"))
    d_model = int(get("embedding_length"))
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab_size = int(gguf_metadata(reader, "llama.vocab_size", len(tokens.data) if tokens else 0))
    has_output = any(t.name == "output.weight" for t in reader.tensors)
    return ModelConfig(
        arch="decoder", vocab_size=vocab_size, d_model=d_model, n_layer=int(get("block_count")), n_head=n_head,
        n_kv_head=int(get("attention.head_count_kv", n_head)),
        d_head=int(get("rope.dimension_count", d_model // n_head)), d_ff=int(get("feed_forward_length")),
        max_seq_len=int(get("context_length")), pos_encoding="rotary", rope_theta=float(get("rope.freq_base", 10000.0)),
        norm="rmsnorm", norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)), activation="swiglu",
        bias=False, tie_embeddings=not has_output, head="lm",
        bos_token_id=gguf_metadata(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=gguf_metadata(reader, "tokenizer.ggml.eos_token_id"),
        pad_token_id=gguf_metadata(reader, "tokenizer.ggml.padding_token_id"),
    ).validate()


def _unpermute_rotary(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's interleaving of rotary channel pairs in a [n_head * d_head, d_model] projection."""
    rows = weight.shape[0]
    return weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _our_name(gguf_name: str) -> str | None:
    """lmlab's name for a GGUF tensor (None for tensors lmlab does not use)."""
    name = gguf_name.removesuffix(".weight")
    if name == "token_embd":
        return "tok_emb.weight"
    if name == "output_norm":
        return "decoder.final_norm.weight"
    if name == "output":
        return "head.proj.weight"
    if name.startswith("blk."):
        _, index, kind = name.split(".", 2)
        if kind in _TENSOR_NAMES:
            return f"decoder.layers.{index}.{_TENSOR_NAMES[kind]}.weight"
    return None


def _rotary_heads(gguf_name: str, config: ModelConfig) -> int | None:
    """How many heads to un-interleave in a q or k projection (None for other tensors)."""
    kind = gguf_name.removesuffix(".weight").rsplit(".", 1)[-1]
    return {"attn_q": config.n_head, "attn_k": config.n_kv_head}.get(kind)


def _dequantized(tensor, config: ModelConfig) -> torch.Tensor:
    import gguf

    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    values = np.array(values, dtype=np.float32).reshape([int(n) for n in reversed(tensor.shape)])
    heads = _rotary_heads(tensor.name, config)
    if heads is not None:
        values = _unpermute_rotary(values, heads)
    return torch.from_numpy(np.ascontiguousarray(values))


def state_dict_from_gguf(reader, config: ModelConfig) -> dict[str, torch.Tensor]:
    """Dequantize every tensor to float32 and rename it to lmlab's layout."""
    return {ours: _dequantized(tensor, config) for tensor in reader.tensors
            if (ours := _our_name(tensor.name)) is not None}


def int4_from_blocks(tensor, config: ModelConfig) -> Int4Tensor:
    """A Q4_0 or Q4_1 matrix as int4 groups of 32, exactly (module docstring)."""
    import gguf

    kind = tensor.tensor_type
    rows, columns = (int(n) for n in reversed(tensor.shape))
    header = 4 if kind == gguf.GGMLQuantizationType.Q4_1 else 2  # fp16 d (and m)
    blocks = np.asarray(tensor.data, dtype=np.uint8).reshape(rows, columns // BLOCK, header + BLOCK // 2)
    d = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
    offset = (blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32) + 8 * d if header == 4
              else np.zeros_like(d))
    packed = blocks[..., header:]
    codes = np.concatenate([packed & 15, packed >> 4], axis=-1).reshape(rows, columns)
    heads = _rotary_heads(tensor.name, config)
    if heads is not None:
        codes, d, offset = (_unpermute_rotary(a, heads) for a in (codes, d, offset))
    return Int4Tensor(*(torch.from_numpy(np.ascontiguousarray(a)) for a in (codes, d, offset)), BLOCK)


def model_from_gguf(reader, config: ModelConfig, spec: QuantSpec | Int4Spec) -> Transformer:
    """The model with int8 (`spec` a QuantSpec) or int4 linear layers, built tensor by tensor from the file
    (module docstring): Q4_0 / Q4_1 blocks stay as they are under int4. The token embedding and the LM head
    are int8 per channel in an int4 model (lmlab.quantization.int4 says why)."""
    import gguf

    exact = (gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q4_1)
    int8 = INT8_CHANNEL if isinstance(spec, Int4Spec) else spec
    with torch.device("meta"):
        model = Transformer(config)
    model.materialize(torch.device("cpu"))  # the rotary tables; ties the head before it is replaced below
    floats = {}
    for tensor in reader.tensors:
        ours = _our_name(tensor.name)
        if ours is None:
            continue
        name = ours.removesuffix(".weight")
        module = model.get_submodule(name)
        if not isinstance(module, (nn.Linear, nn.Embedding)):
            floats[ours] = _dequantized(tensor, config)
        elif isinstance(spec, Int4Spec) and name != "tok_emb" and name != "head.proj":
            quantized = (int4_from_blocks(tensor, config) if tensor.tensor_type in exact else
                         quantize_int4(_dequantized(tensor, config), spec.group_size))
            problem = int4_shape_problem(module.in_features, module.out_features, quantized.group_size)
            if problem:
                raise LmlabError(f"int4 cannot quantize layer {name}: {problem}")
            layer = Int4Linear(module.in_features, module.out_features, False, quantized.group_size)
            layer.store(quantized)
            _set_module(model, name, layer)
        else:
            layer = (QuantizedLinear(module.in_features, module.out_features, False, int8)
                     if isinstance(module, nn.Linear) else
                     QuantizedEmbedding(module.num_embeddings, module.embedding_dim, int8))
            layer.store(quantize(_dequantized(tensor, config), int8))
            _set_module(model, name, layer)
    model.load_state_dict(floats, strict=False, assign=True)
    if config.tie_embeddings:
        model.head.proj = TiedQuantizedLinear(model.tok_emb, bias=False)
    return model.eval()


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)
