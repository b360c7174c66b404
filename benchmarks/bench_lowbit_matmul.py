"""Low-bit weight-only matmul kernels on this CPU, on SmolLM2-135M's shapes (no model is loaded).

One decoder layer's projections (q, k, v, o: 576→576/192/192/576; gate, up: 576→1536; down:
1536→576) and the tied LM head (576→49152), for a batch of 1 row (decoding) and 16 rows (a batch of
decoding requests, or a chunk of prefill). For each kernel it prints the median time of one pass over
the layer's seven matmuls, and of the head, and the ratio to fp32 `F.linear` measured in the same run
(rounds interleave the kernels, so a busy machine slows them alike):

- fp32 / bf16: `F.linear` on float weights (oneDNN / MKL);
- int8 dequantize + F.linear: what lmlab did before, Ŵ = q · scale made in float every call;
- int8 kernel, fp32 inputs: `torch.ops.aten._weight_int8pack_mm` called with fp32 (its scalar loop);
- int8 (lmlab): QuantizedLinear, per-channel absmax, on the same kernel with bf16 inputs (an fp32
  input is rounded to bf16 for the kernel and the result returned in fp32);
- int4 gG (lmlab): Int4Linear, `_convert_weight_to_int4pack_for_cpu` + `_weight_int4pack_mm_for_cpu`
  (two 4-bit codes per byte, a bf16 scale and offset per group of G inputs), same handling of fp32;
- torchao (only when `import torchao` works): its `Int8WeightOnlyConfig` and `Int4WeightOnlyConfig`
  (opaque CPU packing) applied to the same layers with `quantize_`.

    python benchmarks/bench_lowbit_matmul.py [--threads 2] [--rounds 20] [--rows 1,16]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.quantization.int4 import Int4Linear, int4_shape_problem
from lmlab.quantization.quantized_linear import QuantizedLinear
from lmlab.quantization.schemes import QuantSpec

LAYER = [(576, 576), (576, 192), (576, 192), (576, 576), (576, 1536), (576, 1536), (1536, 576)]
HEAD = [(576, 49152)]


def linears(shapes: list[tuple[int, int]], seed: int = 0) -> nn.ModuleList:
    torch.manual_seed(seed)
    return nn.ModuleList(nn.Linear(i, o, bias=False) for i, o in shapes)


def torchao_variants(shapes: list[tuple[int, int]]) -> dict[str, nn.ModuleList]:
    try:
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
    except ImportError:
        return {}
    out = {}
    for name, config, dtype in [("torchao int8 wo", Int8WeightOnlyConfig(), torch.float32),
                                ("torchao int8 wo bf16", Int8WeightOnlyConfig(), torch.bfloat16),
                                ("torchao int4 wo g64 bf16",
                                 Int4WeightOnlyConfig(group_size=64, int4_packing_format="opaque"), torch.bfloat16)]:
        layers = linears(shapes).to(dtype)
        try:
            quantize_(layers, config)
        except Exception as err:  # noqa: BLE001 - a benchmark reports what torchao refuses
            print(f"{name}: not measured ({type(err).__name__}: {str(err).splitlines()[0][:100]})")
            continue
        out[name] = (layers, dtype)
    return out


class Dequantized(nn.Module):
    """lmlab's former int8 path: Ŵ = q · scale made in float at every call, then F.linear."""

    def __init__(self, layer: QuantizedLinear) -> None:
        super().__init__()
        self.layer, self.in_features = layer, layer.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.layer.quantized.dequantize(x.dtype))


class ScalarKernel(nn.Module):
    """The int8 kernel called with fp32 inputs and scales: torch 2.13's scalar (non-vectorized) loop."""

    def __init__(self, layer: QuantizedLinear) -> None:
        super().__init__()
        self.layer, self.in_features = layer, layer.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(x, self.layer.qweight, self.layer.scale.reshape(-1))


def variants(shapes: list[tuple[int, int]]) -> dict[str, tuple[nn.ModuleList, torch.dtype]]:
    base = linears(shapes)
    out = {"fp32": (base, torch.float32), "bf16": (copy.deepcopy(base).to(torch.bfloat16), torch.bfloat16)}
    int8 = nn.ModuleList(QuantizedLinear.from_float(m, QuantSpec("absmax", "channel")) for m in base)
    out["int8 dequantize + F.linear"] = (nn.ModuleList(Dequantized(m) for m in int8), torch.float32)
    out["int8 kernel, fp32 inputs"] = (nn.ModuleList(ScalarKernel(m) for m in int8), torch.float32)
    out["int8 (lmlab), fp32 x"] = (int8, torch.float32)
    out["int8 (lmlab), bf16 x"] = (int8, torch.bfloat16)
    for group in (32, 64, 128):
        problems = {int4_shape_problem(i, o, group) for i, o in shapes} - {None}
        if problems:
            print(f"int4 groups of {group}: not measured ({problems.pop()})")
            continue
        int4 = nn.ModuleList(Int4Linear.from_float(m, group) for m in base)
        out[f"int4 g{group} (lmlab), fp32 x"] = (int4, torch.float32)
        out[f"int4 g{group} (lmlab), bf16 x"] = (int4, torch.bfloat16)
    out.update(torchao_variants(shapes))
    return out


def timer(layers: nn.ModuleList, inputs: list[torch.Tensor]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        for layer, x in zip(layers, inputs):
            layer(x)
        return time.perf_counter() - start
    return run


@torch.no_grad()
def measure(shapes: list[tuple[int, int]], rows: int, rounds: int) -> dict[str, float]:
    torch.manual_seed(1)
    inputs = [torch.randn(rows, i) for i, _ in shapes]
    timers = {}
    for name, (layers, dtype) in variants(shapes).items():
        timers[name] = timer(layers, [x.to(dtype) for x in inputs])
        timers[name]()  # warm up (kernel caches, oneDNN primitives)
    times: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(rounds):
        for name, run in timers.items():
            times[name].append(run())
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--rows", default="1,16", help="comma-separated batch sizes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    caps = torch.backends.cpu.get_cpu_capability()
    amx = torch.cpu._is_amx_tile_supported()
    print(f"torch {torch.__version__}, {args.threads} threads, kernels {caps}, AMX tiles: {amx}, "
          f"AVX512-BF16: {torch.cpu._is_avx512_bf16_supported()}, VNNI: {torch.cpu._is_vnni_supported()}")
    for rows in (int(r) for r in args.rows.split(",")):
        for label, shapes in (("one decoder layer (7 matmuls)", LAYER), ("LM head 576→49152", HEAD)):
            medians = measure(shapes, rows, args.rounds)
            print(f"\n{label}, {rows} row(s): median of {args.rounds} rounds")
            for name, seconds in medians.items():
                print(f"  {name:<26} {seconds * 1e3:8.3f} ms   {medians['fp32'] / seconds:5.2f}x fp32")


if __name__ == "__main__":
    main()
