"""int4 group-wise weight-only quantization, multiplied by PyTorch's CPU kernel on the packed codes.

Each row of a weight matrix W [out, in] is cut into groups of G consecutive inputs (G = 32, 64 or
128, as in GPTQ and AWQ; llama.cpp's Q4_0 / Q4_1 use G = 32). A group keeps 4-bit codes q ∈ {0..15},
a scale s and an offset z (asymmetric min-max, the formula of llama.cpp's Q4_1):

    s = (max - min) / 15,   q = clamp(round((w - min) / s), 0, 15),   ŵ = min + q·s = (q - 8)·s + z,
    z = min + 8·s

so every weight is within s/2 of its stored value (a constant group gets s = 0 and z = the constant).
The (q - 8)·s + z form is the one of the kernel below (and of torchao's int4 weight-only layout).

The matmul y = x Ŵᵀ + b runs on `torch.ops.aten._weight_int4pack_mm_for_cpu`, which reads two codes
per byte, in the layout `_convert_weight_to_int4pack_for_cpu` writes, and dequantizes them in
registers, group by group: no float copy of W is ever made. In torch 2.13 the kernel is vectorized on
x86 (AVX-512 FMAs; AVX2 on older CPUs) for bf16 inputs only; fp32 inputs take a scalar loop that is
10-50× slower. So the layer rounds its input to bf16 (8 significant bits, finer than the 4-bit
weights), keeps s and z in bf16, accumulates in fp32 inside the kernel, and returns the kernel's bf16
result in the input's dtype. The kernel uses no AMX or AVX512-BF16 instructions (bf16 is widened to
fp32 by shifts), so it runs alike on CPUs with and without them. benchmarks/bench_lowbit_matmul.py
compares it with the alternatives (docs/inference.md).

In an int4 model the token embedding and the LM head stay int8 (per channel, quantized_linear.py), as
llama.cpp's Q4 files keep their output matrix at 6-8 bits (SmolLM2's: Q8_0): they are the layers most
sensitive to rounding, and a tied table is both.

The kernel's constraints: out_features a multiple of 16 (it packs blocks of 16-64 rows) and
in_features a multiple of G. The packed layout depends on the CPU (64-row blocks with AVX-512, 32
with AVX2), so checkpoints store the codes in a portable layout instead, two per byte along the row
(low nibble = even column), and the layer packs them when it loads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lmlab import kernels
from lmlab.errors import LmlabError

GROUP_SIZES = (32, 64, 128)
DEFAULT_GROUP_SIZE = 64
ROW_BLOCK = 16  # the kernel packs rows in blocks of 16
KERNEL_DTYPE = torch.bfloat16
PACK_ROWS = 4096  # a multiple of the kernel's row blocks


def check_group_size(group_size: int) -> int:
    if group_size not in GROUP_SIZES:
        raise LmlabError(f"int4 group size must be one of {', '.join(map(str, GROUP_SIZES))}, not {group_size}")
    return group_size


@dataclass(frozen=True)
class Int4Spec:
    """int4 weights in groups of `group_size` inputs (min-max, a scale and an offset per group)."""

    group_size: int = DEFAULT_GROUP_SIZE

    def validate(self) -> Int4Spec:
        check_group_size(self.group_size)
        return self


def int4_shape_problem(in_features: int, out_features: int | None, group_size: int) -> str | None:
    """Why the int4 kernel cannot take a [out_features, in_features] matrix with this group size, or None
    (out_features None: a table only looked up, which the kernel never multiplies)."""
    if in_features % group_size:
        fits = [g for g in GROUP_SIZES if in_features % g == 0]
        hint = f"; --group-size {fits[-1]} fits" if fits else f"; no int4 group size ({GROUP_SIZES}) divides it"
        return f"in_features {in_features} is not a multiple of the group size {group_size}{hint}"
    if out_features is not None and out_features % ROW_BLOCK:
        return f"out_features {out_features} is not a multiple of {ROW_BLOCK} (the kernel packs rows by 16)"
    return None


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Codes 0..15, [rows, columns] (even columns) -> uint8 [rows, columns / 2], low nibble = even column."""
    codes = codes.to(torch.uint8)
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of pack_nibbles: uint8 [rows, columns / 2] -> codes uint8 [rows, columns]."""
    return torch.stack([packed & 15, packed >> 4], dim=-1).reshape(*packed.shape[:-1], -1)


@dataclass
class Int4Tensor:
    """Codes `q` (uint8 0..15, [rows, columns]) with `scale` and `offset` [rows, columns / group_size]."""

    q: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor
    group_size: int

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """ŵ = (q - 8)·s + z, computed in fp32."""
        rows, columns = self.q.shape
        groups = self.q.reshape(rows, -1, self.group_size).float() - 8
        values = groups * self.scale.float().unsqueeze(-1) + self.offset.float().unsqueeze(-1)
        return values.reshape(rows, columns).to(dtype)

    def select_rows(self, index: torch.Tensor) -> Int4Tensor:
        return Int4Tensor(self.q[index], self.scale[index], self.offset[index], self.group_size)

    def to(self, dtype: torch.dtype) -> Int4Tensor:
        """The scales and offsets in `dtype` (bf16 for the kernel); codes unchanged."""
        return Int4Tensor(self.q, self.scale.to(dtype), self.offset.to(dtype), self.group_size)


def quantize_int4(weight: torch.Tensor, group_size: int) -> Int4Tensor:
    """Min-max int4 quantization of a 2-D matrix in groups of `group_size` columns (module docstring)."""
    rows, columns = weight.shape
    groups = weight.detach().float().reshape(rows, columns // group_size, group_size)
    lo, hi = groups.aminmax(dim=-1)
    scale = (hi - lo) / 15
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.round((groups - lo.unsqueeze(-1)) / safe.unsqueeze(-1)).clamp(0, 15).to(torch.uint8)
    return Int4Tensor(q.reshape(rows, columns), scale, lo + 8 * scale, group_size)


def kernel_matmul(x: torch.Tensor, packed: torch.Tensor, group_size: int, scale_offset: torch.Tensor) -> torch.Tensor:
    """x [..., in] Ŵᵀ with the packed int4 matrix, in x's dtype (the kernel computes on bf16 inputs)."""
    if x.device.type != "cpu":
        raise LmlabError(f"int4 layers run on PyTorch's CPU kernel; the input is on {x.device}")
    rows = x.reshape(-1, x.shape[-1])
    rows = (rows if rows.dtype == KERNEL_DTYPE else rows.to(KERNEL_DTYPE)).contiguous()
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, packed, group_size, scale_offset)
    y = y.view(*x.shape[:-1], y.shape[-1])
    return y if x.dtype == KERNEL_DTYPE else y.to(x.dtype)


def native_matmul(x: torch.Tensor, product) -> torch.Tensor:
    """x [..., in] times a matrix through `product` (one of lmlab's kernels, lmlab.kernels: rows [n, in] of fp32
    or bf16 to [n, out] of the same dtype), in x's dtype."""
    if x.device.type != "cpu":
        raise LmlabError(f"low-bit layers run on CPU kernels; the input is on {x.device}")
    rows = x.reshape(-1, x.shape[-1])
    rows = (rows if rows.dtype in (torch.float32, KERNEL_DTYPE) else rows.to(KERNEL_DTYPE)).contiguous()
    y = product(rows)
    y = y.view(*x.shape[:-1], y.shape[-1])
    return y if x.dtype == y.dtype else y.to(x.dtype)


def kernel_operands(quantized: Int4Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed codes in the kernel's layout, scales and offsets as [groups, rows, 2] in bf16)."""
    # the kernel's layout is a sequence of blocks of 64 (or 32) rows, so packing 4096 rows at a time gives
    # the same bytes while the int32 copy it takes stays small
    packed = torch.cat([torch.ops.aten._convert_weight_to_int4pack_for_cpu(rows.to(torch.int32).contiguous(), 1)
                        for rows in quantized.q.split(PACK_ROWS)])
    scale_offset = torch.stack([quantized.scale, quantized.offset], dim=-1).transpose(0, 1)
    return packed, scale_offset.to(KERNEL_DTYPE).contiguous()


class Int4Linear(nn.Module):
    """y = x Ŵᵀ + b with Ŵ held as packed int4 codes, bf16 scales and offsets (module docstring).

    In memory the codes are in the kernel's CPU-specific layout; the state dict holds them portable
    (`qweight`: uint8 [out, in / 2], two codes per byte; `scale`, `offset`: bf16 [out, in / G]). The
    kernel multiplies the identity matrix to read its own layout back (exactly: each output is one code).
    The kernel's operands are plain attributes, not buffers: `.to(dtype)` leaves them as the kernel needs.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int = DEFAULT_GROUP_SIZE,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        problem = int4_shape_problem(in_features, out_features, check_group_size(group_size))
        if problem:
            raise LmlabError(f"int4 cannot take this layer: {problem}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.bias = nn.Parameter(torch.zeros(out_features, device=device), False) if bias else None
        self.packed: torch.Tensor | None = None
        self.scale_offset: torch.Tensor | None = None
        self.native = False  # True: the operands are in the layout of lmlab's kernels (store)

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: int = DEFAULT_GROUP_SIZE) -> Int4Linear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size)
        layer.store(quantize_int4(linear.weight, group_size))
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return layer

    def store(self, quantized: Int4Tensor) -> None:
        """Keep `quantized` in the layout of lmlab's kernel (lmlab.kernels) or, without it, of PyTorch's."""
        self.native = kernels.native() is not None
        if self.native:
            self.packed, self.scale_offset = kernels.int4_layout(quantized.q, quantized.scale, quantized.offset)
        else:
            self.packed, self.scale_offset = kernel_operands(quantized)

    @classmethod
    def stack_rows(cls, layers: list[Int4Linear]) -> Int4Linear | None:
        """One layer whose rows are those of `layers` in order, with their codes, scales and offsets as
        they are (lmlab.models.fusion); None if the layers differ in inputs, group size or bias."""
        first = layers[0]
        if any((layer.in_features, layer.group_size, layer.bias is None)
               != (first.in_features, first.group_size, first.bias is None) for layer in layers):
            return None
        parts = [layer.quantized() for layer in layers]
        fused = cls(first.in_features, sum(layer.out_features for layer in layers), first.bias is not None,
                    first.group_size)
        fused.store(Int4Tensor(*(torch.cat([getattr(part, field) for part in parts])
                                 for field in ("q", "scale", "offset")), first.group_size))
        if first.bias is not None:
            fused.bias = nn.Parameter(torch.cat([layer.bias.detach() for layer in layers]), requires_grad=False)
        return fused

    @torch.no_grad()
    def quantized(self) -> Int4Tensor:
        """The codes, scales and offsets, read back from the kernel's layout."""
        if self.native:
            return Int4Tensor(*kernels.int4_codes(self.packed, self.scale_offset), self.group_size)
        eye = torch.eye(self.in_features, dtype=KERNEL_DTYPE)
        unit = torch.tensor([1.0, 8.0], dtype=KERNEL_DTYPE).expand_as(self.scale_offset).contiguous()
        codes = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.packed, self.group_size, unit)
        scale, offset = self.scale_offset.transpose(0, 1).unbind(-1)
        return Int4Tensor(codes.t().to(torch.uint8), scale, offset, self.group_size)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized matrix, for code that reads `.weight` (computed, not stored)."""
        return self.quantized().dequantize()

    def rows_function(self, dtype: torch.dtype):
        """The kernel alone, as a function of contiguous rows [n, in_features] of `dtype` (a decode loop's
        call, lmlab.models.decode_step: the same product as forward, without its reshapes and checks);
        None if the layer has a bias, or `dtype` is not one the kernel takes (lmlab's: fp32 and bf16;
        PyTorch's: bf16)."""
        packed, group_size, scale_offset = self.packed, self.group_size, self.scale_offset
        if self.bias is not None or dtype not in ((torch.float32, KERNEL_DTYPE) if self.native else (KERNEL_DTYPE,)):
            return None
        if self.native:
            product = kernels.compiled().int4_mm
            return lambda rows: product(rows, packed, scale_offset, group_size)
        return lambda rows: torch.ops.aten._weight_int4pack_mm_for_cpu(rows, packed, group_size, scale_offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.native:
            product = kernels.compiled().int4_mm
            y = native_matmul(x, lambda rows: product(rows, self.packed, self.scale_offset, self.group_size))
        else:
            y = kernel_matmul(x, self.packed, self.group_size, self.scale_offset)
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        rows, columns, groups = self.out_features, self.in_features, self.in_features // self.group_size
        if self.packed is None:  # a skeleton about to be loaded: shapes only
            meta = dict(device="meta")
            destination[prefix + "qweight"] = torch.empty(rows, columns // 2, dtype=torch.uint8, **meta)
            destination[prefix + "scale"] = torch.empty(rows, groups, dtype=KERNEL_DTYPE, **meta)
            destination[prefix + "offset"] = torch.empty(rows, groups, dtype=KERNEL_DTYPE, **meta)
        else:
            quantized = self.quantized()
            destination[prefix + "qweight"] = pack_nibbles(quantized.q)
            destination[prefix + "scale"], destination[prefix + "offset"] = quantized.scale, quantized.offset
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        names = ["qweight", "scale", "offset"] + (["bias"] if self.bias is not None else [])
        missing = [prefix + name for name in names if prefix + name not in state_dict]
        if missing:
            missing_keys.extend(missing)
            return
        qweight, scale, offset = (state_dict[prefix + name] for name in names[:3])
        groups = self.in_features // self.group_size
        expected = {"qweight": (self.out_features, self.in_features // 2), "scale": (self.out_features, groups),
                    "offset": (self.out_features, groups)}
        for name, tensor in zip(names, (qweight, scale, offset)):
            if tuple(tensor.shape) != expected[name]:
                error_msgs.append(f"size mismatch for {prefix}{name}: {tuple(tensor.shape)} in the checkpoint, "
                                  f"{expected[name]} in the model")
                return
        self.store(Int4Tensor(unpack_nibbles(qweight), scale.float(), offset.float(), self.group_size))
        if self.bias is not None:
            self.bias = nn.Parameter(state_dict[prefix + "bias"].detach().clone().float(), requires_grad=False)
        for key in state_dict:
            if key.startswith(prefix) and key[len(prefix):] not in names and strict:
                unexpected_keys.append(key)

    def extra_repr(self) -> str:
        return f"{self.out_features}×{self.in_features} int4, groups of {self.group_size}"
