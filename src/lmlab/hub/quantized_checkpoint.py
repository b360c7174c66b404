"""Quantized checkpoints: an lmlab checkpoint folder plus quantization.json.

    lmlab.json          the ModelConfig, unchanged
    model.safetensors   int8: every quantized matrix as `<layer>.qweight` (int8),
                        `<layer>.scale` (fp32) and, for zero-point, `<layer>.zero`
                        (int8); norms and biases in fp32. A tied LM head is not
                        stored: it reads `tok_emb.qweight`.
                        int4: `<layer>.qweight` (uint8 [out, in / 2], two codes
                        per byte, low nibble first), `<layer>.scale` and
                        `<layer>.offset` (bf16 [out, in / group size]): the
                        portable layout of int4.py, packed for the kernel on load;
                        the embedding and LM head as int8 per channel.
                        fp16 / bf16: the usual weights, cast to that dtype.
    quantization.json   {"dtype": "int8", "scheme": ..., "granularity": ...,
                        "group_size": ..., "include_embeddings": ...},
                        {"dtype": "int4", "group_size": ..., "include_embeddings": ...}
                        or {"dtype": "bf16"} / {"dtype": "fp16"}
    tokenizer files     when the model has a tokenizer

fp16 / bf16 folders are ordinary lmlab checkpoints (quantization.json only
records the cast), so `load_checkpoint` reads them too. An int8 or int4 folder
needs `load_quantized`, which rebuilds the same layers on the meta device and
takes the stored tensors as their buffers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from lmlab.config import ModelConfig
from lmlab.errors import LmlabError, did_you_mean
from lmlab.hub.checkpoint import LMLAB_CONFIG, WEIGHTS, load_checkpoint, write_checkpoint
from lmlab.io import MODEL_KIND, read_json, read_safetensors, replace_folder, save_safetensors, write_json
from lmlab.models import Transformer
from lmlab.quantization.int4 import Int4Linear, Int4Spec
from lmlab.quantization.quantized_linear import (INT8_CHANNEL, Int8Matrix, QuantizedEmbedding, QuantizedLinear,
                                                 TiedQuantizedLinear, is_tied, lm_head_projection, quantize_model,
                                                 swap_layers)
from lmlab.quantization.schemes import QuantSpec
from lmlab.tokenizers.base import TokenizerProtocol

QUANTIZATION_CONFIG = "quantization.json"
TIED_HEAD = "head.proj.weight"  # stored once, as tok_emb.weight
DTYPES = ("fp16", "bf16", "int8", "int4")
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise LmlabError(f"unknown quantization dtype {dtype!r}{did_you_mean(dtype, DTYPES)}; "
                         f"choose from {', '.join(DTYPES)}")
    return dtype


@dataclass(frozen=True)
class QuantizationConfig:
    """What quantization.json records: the target dtype and, for int8 and int4, the spec."""

    dtype: str
    spec: QuantSpec | Int4Spec | None = None
    include_embeddings: bool = True

    def to_dict(self) -> dict:
        if self.spec is None:
            return {"dtype": self.dtype}
        if isinstance(self.spec, Int4Spec):
            return {"dtype": "int4", "group_size": self.spec.group_size,
                    "include_embeddings": self.include_embeddings}
        group = {"group_size": self.spec.group_size} if self.spec.granularity == "group" else {}
        return {"dtype": self.dtype, "scheme": self.spec.scheme, "granularity": self.spec.granularity, **group,
                "include_embeddings": self.include_embeddings}

    @classmethod
    def from_dict(cls, data: dict, source: str) -> QuantizationConfig:
        try:
            dtype = check_dtype(data["dtype"])
            if dtype == "int4":
                return cls(dtype, Int4Spec(int(data["group_size"])).validate(), bool(data["include_embeddings"]))
            if dtype != "int8":
                return cls(dtype)
            group_size = int(data["group_size"]) if data["granularity"] == "group" else QuantSpec.group_size
            spec = QuantSpec(data["scheme"], data["granularity"], group_size).validate()
            return cls(dtype, spec, bool(data["include_embeddings"]))
        except (KeyError, TypeError, ValueError, LmlabError) as err:
            raise LmlabError(f"{source}: not a valid quantization config ({err})") from None


def is_quantized_checkpoint(folder: Path) -> bool:
    return (Path(folder) / QUANTIZATION_CONFIG).is_file()


def quantization_of(model: Transformer) -> QuantizationConfig:
    """The QuantizationConfig that describes a model quantized in memory (or cast to fp16 / bf16)."""
    embeddings = isinstance(model.tok_emb, QuantizedEmbedding)
    layers = [m for m in model.modules() if isinstance(m, Int4Linear)]
    if layers:  # int4, with int8 embeddings
        return QuantizationConfig("int4", Int4Spec(layers[0].group_size), embeddings)
    layers = [m for m in model.modules() if isinstance(m, Int8Matrix)]
    if layers:
        return QuantizationConfig("int8", layers[0].spec, embeddings)
    dtype = {v: k for k, v in TORCH_DTYPES.items()}[model.tok_emb.weight.dtype]
    if dtype == "fp32":
        raise LmlabError("the model is neither quantized nor cast to fp16 / bf16: save it with save_checkpoint")
    return QuantizationConfig(dtype)


def save_quantized(model: Transformer, out: Path, tokenizer: TokenizerProtocol | None = None,
                   overwrite: bool = False) -> Path:
    """Write a quantized (int8) or cast (fp16 / bf16) model as a checkpoint folder, atomically."""
    quantization = quantization_of(model)
    with replace_folder(out, MODEL_KIND, overwrite) as tmp:
        if quantization.spec is not None:
            model.config.save(tmp / LMLAB_CONFIG)
            state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()
                     if name != TIED_HEAD or not is_tied(model)}
            save_safetensors(state, tmp / WEIGHTS)
            if tokenizer is not None:
                tokenizer.save(tmp)
        else:
            write_checkpoint(model, tmp, tokenizer)
        write_json(tmp / QUANTIZATION_CONFIG, quantization.to_dict())
    return Path(out)


def read_quantization_config(folder: Path) -> QuantizationConfig:
    path = Path(folder) / QUANTIZATION_CONFIG
    return QuantizationConfig.from_dict(read_json(path), str(path))


def load_quantized(folder: Path, dtype: torch.dtype = torch.float32,
                   expected: QuantSpec | Int4Spec | None = None) -> Transformer:
    """Load a folder written by `save_quantized` as a model in eval mode.

    int8 and int4 layers stay so (activations, norms and biases take `dtype`);
    an fp16 / bf16 folder loads as `dtype`, like any lmlab checkpoint, and is
    then quantized to `expected` if given. A low-bit folder must hold the kind
    of weights `expected` names (int8 or int4), if given.
    """
    folder = Path(folder)
    quantization = read_quantization_config(folder)
    if quantization.spec is None:
        model = load_checkpoint(folder, dtype)
        return quantize_model(model, expected) if expected is not None else model
    if expected is not None and type(expected) is not type(quantization.spec):
        asked = "int4" if isinstance(expected, Int4Spec) else "int8"
        raise LmlabError(f"{folder} holds {quantization.dtype} weights, not {asked}: load it with --dtype "
                         f"{quantization.dtype} (or fp32 / bf16, the dtype of the activations)")
    if not (folder / WEIGHTS).is_file():
        raise LmlabError(f"{folder} has no {WEIGHTS}")
    config = ModelConfig.load(folder / LMLAB_CONFIG)
    state = read_safetensors(folder / WEIGHTS)
    with torch.device("meta"):  # no memory and no random init for weights about to be replaced
        model = Transformer(config)
    model.materialize(torch.device("cpu"))
    if isinstance(quantization.spec, Int4Spec):
        int4_skeleton(model, quantization.spec, quantization.include_embeddings)
    else:
        quantize_model(model, quantization.spec, quantization.include_embeddings)  # int8 layers, still on meta
    tied = is_tied(model)  # a float LM head tied to a float embedding (include_embeddings=False)
    expected = set(model.state_dict()) - ({TIED_HEAD} if tied else set())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    misfit = f"{folder}: weights do not fit the model config and {QUANTIZATION_CONFIG}"
    if missing or unexpected:
        raise LmlabError(f"{misfit} ({f'missing {missing[:3]}' if missing else f'unexpected {unexpected[:3]}'})")
    try:
        model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as err:
        raise LmlabError(f"{misfit} ({str(err).splitlines()[-1].strip()})") from None
    if tied:
        model.tie_weights()
    return model.to(dtype).eval()


def int4_skeleton(model: Transformer, spec: Int4Spec, include_embeddings: bool) -> Transformer:
    """Swap in empty int4 layers, and int8 ones for the embedding and LM head (on the meta device), for
    load_state_dict to fill."""
    meta, head = torch.device("meta"), lm_head_projection(model)

    def linear(layer):
        if layer is head:
            return QuantizedLinear(layer.in_features, layer.out_features, layer.bias is not None, INT8_CHANNEL, meta)
        return Int4Linear(layer.in_features, layer.out_features, layer.bias is not None, spec.group_size, meta)

    return swap_layers(model, include_embeddings, linear,
                       lambda embedding: QuantizedEmbedding(embedding.num_embeddings, embedding.embedding_dim,
                                                            INT8_CHANNEL, meta),
                       lambda head_, embedding: TiedQuantizedLinear(embedding, head_.bias is not None))
