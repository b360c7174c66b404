"""Layers that keep their weight matrix in int8 and compute with it, and the swap that installs them.

Weight-only quantization: the matrix is stored as int8 plus scales (see
schemes.py), W ≈ (q - zero) · scale, and y = x Ŵᵀ + b. Memory for weights
drops about 4× against fp32; activations, norms and biases stay in float.

Per-channel and per-tensor weights are multiplied by PyTorch's int8
weight-only CPU kernel, torch.ops.aten._weight_int8pack_mm (the kernel of
torchao's int8 weight-only quantization), which reads the int8 rows directly
and scales each output channel: y_i = scale_i · (x · q_i). No float copy of
the matrix is made, so decoding reads 1 byte per weight instead of 4. A
zero point adds one correction per row of x: x · (q_i - z_i) = x · q_i - z_i Σx.
In torch 2.13 the kernel is vectorized (AVX-512 / AVX2 FMAs) on x86 for bf16
inputs only, and fp32 inputs take a scalar loop several times slower than
fp32 F.linear; so the layer rounds its input to bf16 for the kernel (8
significant bits against the weights' 7) and returns the result in the
input's dtype (the kernel's own output is bf16). It uses no AMX or
AVX512-BF16 instructions, so it runs alike on CPUs with and without them.
benchmarks/bench_lowbit_matmul.py compares it with dequantizing and with
int4 (docs/inference.md).

Group-wise int8 has no such kernel: it is dequantized on the fly, in the
activations' dtype, right before F.linear (slow: a float copy per call).
int4 (int4.py) is group-wise and has its own kernel.

What `quantize_model` quantizes: every nn.Linear of the transformer and, unless
include_embeddings=False, the token embedding and the LM head (int8 per channel
in an int4 model). For a tied LM
head (Press & Wolf 2017; SmolLM2, GPT-2) the one quantized table serves both: the
embedding gathers and dequantizes the rows of the tokens it looks up, and the
head multiplies by the whole table. Per-channel scales of the table are per
token row, which is per output channel of the head. The token embedding is a
fifth of SmolLM2-135M's parameters, so leaving it in fp32 would keep the model
at about 40% of its fp32 size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lmlab import kernels
from lmlab.errors import LmlabError
from lmlab.models import Transformer
from lmlab.quantization.int4 import Int4Linear, Int4Spec, int4_shape_problem, native_matmul
from lmlab.quantization.tied import TiedHead
from lmlab.quantization.schemes import QuantizedTensor, QuantSpec, quantize


class Int8Matrix(nn.Module):
    """Buffers `qweight` (int8 [rows, columns]), `scale` and, for zero-point, `zero`."""

    def __init__(self, rows: int, columns: int, spec: QuantSpec, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.spec = spec.validate()
        scale_shape = spec.scale_shape(rows, columns)
        self.register_buffer("qweight", torch.zeros(rows, columns, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.ones(scale_shape, device=device))
        zero = torch.zeros(scale_shape, dtype=torch.int8, device=device) if spec.scheme == "zeropoint" else None
        self.register_buffer("zero", zero)
        self.native = kernels.native() is not None  # lmlab's int8 kernel where it applies (native_operands)

    @property
    def quantized(self) -> QuantizedTensor:
        return QuantizedTensor(self.qweight, self.scale, self.zero, self.spec)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized matrix, for code that reads `.weight` (its dtype and device are the compute ones)."""
        return self.quantized.dequantize(self.scale.dtype)

    def store(self, quantized: QuantizedTensor) -> None:
        """Keep `quantized` (its spec must be this module's) in the buffers."""
        self.qweight, self.scale = quantized.q, quantized.scale
        if quantized.zero is not None:
            self.zero = quantized.zero

    def kernel_operands(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The kernel's int8 matrix (aligned), per-row scales (bf16 [rows]) and, for zero-point,
        scale · zero per row (fp32).

        Kept until the buffers change (a load, a `.to(dtype)`), so a decoding step makes no new tensor.
        """
        buffers = (self.qweight, self.scale, self.zero)
        cached = self.__dict__.get("_kernel_cache")
        if cached is None or any(a is not b for a, b in zip(cached[0], buffers)):
            self.qweight = aligned(self.qweight)  # a loaded file's tensors may start anywhere
            rows = self.qweight.shape[0]
            scale = self.scale.float().expand(rows, 1).reshape(rows)
            zero = None if self.zero is None else scale * self.zero.float().expand(rows, 1).reshape(rows)
            buffers = (self.qweight, self.scale, self.zero)
            native = (self.native and zero is None and self.spec.granularity in ("channel", "tensor")
                      and self.qweight.shape[1] % 32 == 0 and self.qweight.device.type == "cpu")
            cached = self.__dict__["_kernel_cache"] = (buffers, scale.to(KERNEL_DTYPE), zero,
                                                       scale.contiguous() if native else None)
        return self.qweight, cached[1], cached[2]

    def native_operands(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(int8 matrix, fp32 scale per row) for lmlab's int8 kernel (lmlab.kernels), or None where it does not
        apply: no compiled kernels (or LMLAB_KERNELS=torch when the layer was made), a zero point, a group-wise scale,
        rows of a length not a multiple of 32."""
        if self.spec.granularity not in ("channel", "tensor"):
            return None
        qweight = self.kernel_operands()[0]
        scale = self.__dict__["_kernel_cache"][3]
        return None if scale is None else (qweight, scale)

    def extra_repr(self) -> str:
        rows, columns = self.qweight.shape
        return f"{rows}×{columns} int8, {self.spec.scheme}, per {self.spec.granularity}" + (
            f" of {self.spec.group_size}" if self.spec.granularity == "group" else "")


KERNEL_DTYPE = torch.bfloat16


KERNEL_ALIGNMENT = 64  # bytes; the kernel's aligned vector loads need rows on 16- and 32-byte boundaries


def has_kernel(weights: Int8Matrix, x: torch.Tensor) -> bool:
    """True if `_weight_int8pack_mm` can multiply x by these weights: one scale per row, a CPU input, and
    rows of a multiple of 16 columns (it loads 16 at a time, aligned)."""
    return (weights.spec.granularity in ("channel", "tensor") and x.device.type == "cpu"
            and weights.qweight.shape[1] % 16 == 0)


def aligned(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` contiguous and starting on a KERNEL_ALIGNMENT boundary (a copy only if it is not)."""
    tensor = tensor.contiguous()
    return tensor if tensor.data_ptr() % KERNEL_ALIGNMENT == 0 else tensor.clone()


def int8_linear(x: torch.Tensor, weights: Int8Matrix, bias: torch.Tensor | None) -> torch.Tensor:
    """y = x Ŵᵀ + b with the int8 matrix of `weights`, in x's dtype (module docstring)."""
    if bias is not None and bias.dtype != x.dtype:
        bias = bias.to(x.dtype)
    native = weights.native_operands() if x.device.type == "cpu" else None
    if native is not None:
        product = kernels.compiled().int8_mm
        y = native_matmul(x, lambda rows: product(rows, *native))
        return y + bias if bias is not None else y
    if not has_kernel(weights, x):
        return F.linear(x, weights.quantized.dequantize(x.dtype), bias)
    qweight, scale, scaled_zero = weights.kernel_operands()
    rows = x.reshape(-1, x.shape[-1])
    rows = aligned(rows if rows.dtype == KERNEL_DTYPE else rows.to(KERNEL_DTYPE))
    y = torch.ops.aten._weight_int8pack_mm(rows, qweight, scale)
    if x.dtype != KERNEL_DTYPE:
        y = y.to(x.dtype)
    if scaled_zero is not None:  # the same bf16 inputs as the kernel's
        y = y - rows.sum(dim=-1, keepdim=True, dtype=torch.float32).to(x.dtype) * scaled_zero.to(x.dtype)
    y = y.view(*x.shape[:-1], y.shape[-1])
    return y + bias if bias is not None else y


def int8_rows_function(weights: Int8Matrix, bias: torch.Tensor | None, dtype: torch.dtype):
    """The int8 kernel alone, as a function of contiguous rows [n, columns] of `dtype` (a decode loop's call,
    lmlab.models.decode_step: the same product as int8_linear, without its reshapes and checks); None
    unless `dtype` is the kernel's and the layer is per channel (or tensor), without zero point or bias.
    lmlab's kernel (Int8Matrix.native_operands) takes fp32 and bf16 rows; PyTorch's bf16 only."""
    native = weights.native_operands()
    if native is not None and bias is None and dtype in (torch.float32, KERNEL_DTYPE):
        product, (qweight, scale) = kernels.compiled().int8_mm, native
        return lambda rows: product(rows, qweight, scale)
    if (dtype != KERNEL_DTYPE or bias is not None or weights.zero is not None
            or not has_kernel(weights, torch.empty(0, dtype=dtype, device=weights.qweight.device))):
        return None
    qweight, scale, _ = weights.kernel_operands()
    return lambda rows: torch.ops.aten._weight_int8pack_mm(aligned(rows), qweight, scale)


class QuantizedLinear(Int8Matrix):
    """A linear layer y = x Ŵᵀ + b whose weight is int8, dequantized on the fly."""

    def __init__(self, in_features: int, out_features: int, bias: bool, spec: QuantSpec,
                 device: torch.device | str | None = None) -> None:
        super().__init__(out_features, in_features, spec, device)
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features, device=device), False) if bias else None

    @classmethod
    def from_float(cls, linear: nn.Linear, spec: QuantSpec) -> QuantizedLinear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, spec, linear.weight.device)
        layer.store(quantize(linear.weight, spec))
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return layer

    @classmethod
    def stack_rows(cls, layers: list[QuantizedLinear]) -> QuantizedLinear | None:
        """One layer whose rows are those of `layers` in order, codes and per-channel scales as they are
        (lmlab.models.fusion); None unless all are per channel with one spec, the same inputs and bias."""
        first = layers[0]
        if first.spec.granularity != "channel" or any(
                (layer.spec, layer.in_features, layer.bias is None) != (first.spec, first.in_features,
                                                                          first.bias is None) for layer in layers):
            return None
        fused = cls(first.in_features, sum(layer.out_features for layer in layers), first.bias is not None,
                    first.spec, first.qweight.device)
        zero = None if first.zero is None else torch.cat([layer.zero for layer in layers])
        fused.store(QuantizedTensor(torch.cat([layer.qweight for layer in layers]),
                                    torch.cat([layer.scale for layer in layers]), zero, first.spec))
        if first.bias is not None:
            fused.bias = nn.Parameter(torch.cat([layer.bias.detach() for layer in layers]), requires_grad=False)
        return fused

    def rows_function(self, dtype: torch.dtype):
        return int8_rows_function(self, self.bias, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, self, self.bias)


class QuantizedEmbedding(Int8Matrix):
    """A token embedding table in int8: a lookup dequantizes only the rows it gathers."""

    def __init__(self, num_embeddings: int, embedding_dim: int, spec: QuantSpec,
                 device: torch.device | str | None = None) -> None:
        super().__init__(num_embeddings, embedding_dim, spec, device)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim

    @classmethod
    def from_float(cls, embedding: nn.Embedding, spec: QuantSpec) -> QuantizedEmbedding:
        table = cls(embedding.num_embeddings, embedding.embedding_dim, spec, embedding.weight.device)
        table.store(quantize(embedding.weight, spec))
        return table

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = self.quantized.select_rows(input_ids.reshape(-1)).dequantize(self.scale.dtype)
        return rows.reshape(*input_ids.shape, self.embedding_dim)


class TiedQuantizedLinear(TiedHead):
    """The LM head of a tied model: logits = x Êᵀ (+ b) with Ê the int8 embedding table, stored once."""

    def rows_function(self, dtype: torch.dtype):
        return int8_rows_function(self.embedding, self.bias, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, self.embedding, self.bias)

    def extra_repr(self) -> str:
        return "tied to the int8 token embedding"


def lm_head_projection(model: Transformer) -> nn.Module | None:
    """The vocabulary projection of an lm or mlm head, if the model has one."""
    return getattr(model.head, "proj", None) if model.head is not None else None


def is_tied(model: Transformer) -> bool:
    projection = lm_head_projection(model)
    return projection is not None and getattr(projection, "weight", None) is model.tok_emb.weight


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def swap_layers(
    model: Transformer,
    include_embeddings: bool,
    make_linear: Callable[[nn.Linear], nn.Module],
    make_embedding: Callable[[nn.Embedding], nn.Module],
    make_tied_head: Callable[[nn.Linear, nn.Module], nn.Module],
) -> Transformer:
    """Replace, in place, every nn.Linear by make_linear(linear) and, with include_embeddings, the token
    embedding by make_embedding(embedding) and a tied LM head by make_tied_head(head, new embedding).

    Without include_embeddings, the LM head projection is left alone too.
    """
    projection = lm_head_projection(model)
    tied = is_tied(model)
    skip = projection if (tied or not include_embeddings) else None
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and m is not skip]
    for name, linear in linears:
        _set_module(model, name, make_linear(linear))
    if include_embeddings:
        model.tok_emb = make_embedding(model.tok_emb)
        if tied:
            model.head.proj = make_tied_head(projection, model.tok_emb)
    return model


INT8_CHANNEL = QuantSpec("absmax", "channel")  # the int8 format with a kernel; embeddings of int4 models


def check_int4_shapes(model: Transformer, spec: Int4Spec) -> None:
    """Refuse, naming the first layer, a model whose shapes the int4 kernel cannot take (before any swap)."""
    head = lm_head_projection(model)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module is not head:
            problem = int4_shape_problem(module.in_features, module.out_features, spec.group_size)
            if problem:
                raise LmlabError(f"int4 cannot quantize layer {name}: {problem}")


@torch.no_grad()
def quantize_model(model: Transformer, spec: QuantSpec | Int4Spec, include_embeddings: bool = True) -> Transformer:
    """Swap, in place, every nn.Linear (and the token embedding and LM head) for int8 or int4 ones; return
    the model. Any nn.Linear is taken, so layers fused beforehand (one q/k/v matrix) are quantized as one.
    With int4, the token embedding and the LM head become int8 per channel (int4.py says why)."""
    spec.validate()
    if isinstance(spec, Int4Spec):
        check_int4_shapes(model, spec)
        head = lm_head_projection(model)
        swap_layers(model, include_embeddings,
                    lambda linear: (QuantizedLinear.from_float(linear, INT8_CHANNEL) if linear is head
                                    else Int4Linear.from_float(linear, spec.group_size)),
                    lambda embedding: QuantizedEmbedding.from_float(embedding, INT8_CHANNEL),
                    TiedQuantizedLinear.from_float)
    else:
        swap_layers(model, include_embeddings, lambda linear: QuantizedLinear.from_float(linear, spec),
                    lambda embedding: QuantizedEmbedding.from_float(embedding, spec), TiedQuantizedLinear.from_float)
    return model.eval()
