"""The number format a model is loaded in: fp32, bf16, int8 or int4 weights (quantized on load).

fp32 and bf16 are the dtype of the weights and of the computation. int8 (absmax, one scale per output
channel) and int4 (min-max, a scale and an offset per group of `group_size` inputs) are weight-only
formats: the matrices of every nn.Linear, the token embedding and the LM head (int8 in int4 models)
become low-bit layers that the CPU kernels multiply directly (quantized_linear.py, int4.py). Those
kernels take bf16 inputs, so a low-bit model computes in bf16 end to end (activations, norms,
attention, KV cache): the residual stream is never converted back and forth around each matrix
product. The float weights are quantized from fp32, before the rest of the model is cast. Every
command that loads a model takes these through one option (`--dtype`, `--group-size`) and one
function (`lmlab.hub.resolve.load_model`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmlab.errors import LmlabError, did_you_mean
from lmlab.quantization.int4 import DEFAULT_GROUP_SIZE, GROUP_SIZES, Int4Spec
from lmlab.quantization.quantized_linear import INT8_CHANNEL
from lmlab.quantization.schemes import QuantSpec

LOAD_DTYPES = ("fp32", "bf16", "int8", "int4")
FLOAT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class WeightFormat:
    """`name` (one of LOAD_DTYPES), the dtype the model computes in, and the low-bit spec (None for floats)."""

    name: str
    compute_dtype: torch.dtype
    spec: QuantSpec | Int4Spec | None = None

    @property
    def load_dtype(self) -> torch.dtype:
        """The dtype float weights are read in: fp32 when they are to be quantized."""
        return torch.float32 if self.spec is not None else self.compute_dtype

    @classmethod
    def parse(cls, dtype: str | torch.dtype, group_size: int | None = None) -> WeightFormat:
        """Check a user's dtype (a name or a torch float dtype) and group size (int4 only; default 64)."""
        if isinstance(dtype, torch.dtype):
            if not dtype.is_floating_point or group_size is not None:
                raise LmlabError(f"a torch dtype ({dtype}) loads float weights; name int8 or int4 for low-bit ones")
            return cls(str(dtype).removeprefix("torch."), dtype)
        if dtype not in LOAD_DTYPES:
            raise LmlabError(f"unknown dtype {dtype!r}{did_you_mean(str(dtype), LOAD_DTYPES)}; "
                             f"choose from {', '.join(LOAD_DTYPES)}")
        if group_size is not None and dtype != "int4":
            raise LmlabError(f"--group-size applies to --dtype int4, not {dtype}")
        if dtype == "int4":
            group = DEFAULT_GROUP_SIZE if group_size is None else group_size
            if group not in GROUP_SIZES:
                raise LmlabError(f"unsupported int4 group size {group}: choose from "
                                 f"{', '.join(map(str, GROUP_SIZES))}")
            return cls(dtype, torch.bfloat16, Int4Spec(group))
        if dtype == "int8":
            return cls(dtype, torch.bfloat16, INT8_CHANNEL)
        return cls(dtype, FLOAT_DTYPES[dtype])

    def describe(self) -> str:
        if isinstance(self.spec, Int4Spec):
            return f"int4 weights (groups of {self.spec.group_size}), bf16 activations"
        return "int8 weights (per channel), bf16 activations" if self.spec else self.name
