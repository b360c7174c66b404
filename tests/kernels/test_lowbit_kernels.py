"""lmlab's VNNI kernels (lmlab.kernels): the product against the dequantized matrix in fp64 on SmolLM2's shapes
and every int4 group size, the activation rounding formula exactly, the layout round trip, the fallbacks to
PyTorch's kernels, and a decode loop on a tiny model with and without them.

The tolerance: the kernel rounds each activation x_k to d_b·round(x_k / d_b), d_b = max_{k∈b}|x_k| / qmax per
block b of 32 (qmax = 127: int8 codes, for int4 weights; 32767: int16 codes, for int8 weights), so by at most
d_b / 2; the rest is exact integer arithmetic and fp32 scaling. Hence
|y_j − Σ_k x_k ŵ_jk| <= Σ_b (d_b / 2) Σ_{k∈b} |ŵ_jk|  +  2^-20 Σ_k |x_k ŵ_jk|  (fp32, a few roundings a block).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lowbit_kernels import BF16_EPS, spy_kernel
from lmlab import kernels
from lmlab.config import get_preset
from lmlab.models import Transformer
from lmlab.models.decode_step import DecodeStep
from lmlab.models.fusion import fuse_projections
from lmlab.quantization.int4 import Int4Linear, Int4Spec, quantize_int4
from lmlab.quantization.quantized_linear import INT8_CHANNEL, QuantizedLinear, quantize_model

native = kernels.native()
pytestmark = pytest.mark.skipif(native is None, reason="lmlab's kernels do not run here (no AVX-512 VNNI or compiler)")

LAYER_SHAPES = [(576, 960), (576, 3072), (1536, 576)]  # SmolLM2's (in, out): fused qkv, fused gate/up, down
HEAD_SHAPE = (576, 49152)  # its tied LM head, int8 in int4 models too
FP32_SLACK = 2.0 ** -20


INT8_CODES, INT16_CODES = 127, 32767  # qmax of the activations for int4 weights (Q8_0) and for int8 weights


def block_rounded(x: torch.Tensor, qmax: int) -> torch.Tensor:
    """The kernel's rounding of rows [M, K] per block of 32 (llama.cpp's Q8_0 for qmax 127), computed as it does
    (fp32: x · (qmax / max|x|), rounded half to even)."""
    blocks = x.float().reshape(x.shape[0], -1, 32)
    amax = blocks.abs().amax(-1, keepdim=True)
    inverse = torch.where(amax > 0, torch.full_like(amax, qmax).div(amax), 0)  # (q / t is q · (1 / t) in torch)
    codes = torch.round(blocks * inverse).clamp(-qmax, qmax)
    return (codes * (amax / qmax)).reshape(x.shape).double()


def rounding_bound(x: torch.Tensor, weight: torch.Tensor, qmax: int) -> torch.Tensor:
    """Σ_b (d_b / 2) Σ_{k∈b} |ŵ_jk| + the fp32 slack (module docstring), [M, N]."""
    d = x.double().reshape(x.shape[0], -1, 32).abs().amax(-1) / qmax
    per_input = (d / 2).repeat_interleave(32, dim=1)
    return per_input @ weight.double().abs().T + FP32_SLACK * (x.double().abs() @ weight.double().abs().T) + 1e-9


def check_product(y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, qmax: int) -> None:
    """y within the bound of the dequantized product, and the formula's product (rounded activations times the
    dequantized matrix) within fp32 rounding (and, for bf16, the output's rounding: at most 2^-8 of it)."""
    formula = block_rounded(x, qmax) @ weight.double().T
    slack = FP32_SLACK * (x.double().abs() @ weight.double().abs().T) + 1e-9
    if y.dtype == torch.bfloat16:
        slack = slack + BF16_EPS * formula.abs()
    assert torch.all((y.double() - formula).abs() <= slack)
    reference = x.double() @ weight.double().T
    assert torch.all((y.double() - reference).abs() <= rounding_bound(x, weight, qmax) + slack)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("in_features, out_features, group_size",
                         [(i, o, g) for i, o in LAYER_SHAPES for g in (32, 64, 128) if i % g == 0])  # 576 % 128 != 0
def test_the_int4_kernel_gives_the_dequantized_product(in_features, out_features, group_size, dtype):
    generator = torch.Generator().manual_seed(in_features + out_features)
    weight = torch.randn(out_features, in_features, generator=generator) * 0.05
    quantized = quantize_int4(weight, group_size).to(torch.bfloat16)
    packed, scales = kernels.int4_layout(quantized.q, quantized.scale, quantized.offset)
    x = (torch.randn(3, in_features, generator=generator) * torch.rand(in_features, generator=generator) * 3).to(dtype)
    y = native.int4_mm(x, packed, scales, group_size)
    assert y.dtype == dtype and y.shape == (3, out_features)
    check_product(y, x, quantized.dequantize(), INT8_CODES)


@pytest.mark.parametrize("in_features, out_features, dtype", [
    *((i, o, dtype) for i, o in LAYER_SHAPES + [(96, 7), (32, 5)] for dtype in (torch.float32, torch.bfloat16)),
    (*HEAD_SHAPE, torch.bfloat16)])  # (96, 7), (32, 5): a tail of 32 inputs, a tail of 3 and 1 rows
def test_the_int8_kernel_gives_the_dequantized_product(in_features, out_features, dtype):
    generator = torch.Generator().manual_seed(in_features + out_features)
    codes = torch.randint(-127, 128, (out_features, in_features), generator=generator, dtype=torch.int8)
    scale = torch.rand(out_features, generator=generator) * 1e-3
    x = (torch.randn(2, in_features, generator=generator) * 2).to(dtype)
    y = native.int8_mm(x, codes, scale)
    assert y.dtype == dtype and y.shape == (2, out_features)
    check_product(y, x, codes.double() * scale.double()[:, None], INT16_CODES)


def test_the_int4_layout_reads_back_the_codes_scales_and_offsets():
    quantized = quantize_int4(torch.randn(48, 128), 64).to(torch.bfloat16)
    codes, scale, offset = kernels.int4_codes(*kernels.int4_layout(quantized.q, quantized.scale, quantized.offset))
    assert torch.equal(codes, quantized.q) and torch.equal(scale, quantized.scale)
    assert torch.equal(offset, quantized.offset)


def test_layers_run_lmlabs_kernels_by_default_and_torchs_when_told(monkeypatch):
    linear = torch.nn.Linear(128, 48, bias=False)
    x = torch.randn(2, 5, 128)
    for make, name, qmax in [(lambda: Int4Linear.from_float(linear, 32), "_weight_int4pack_mm_for_cpu", INT8_CODES),
                             (lambda: QuantizedLinear.from_float(linear, INT8_CHANNEL), "_weight_int8pack_mm",
                              INT16_CODES)]:
        with monkeypatch.context() as patch:
            calls = spy_kernel(patch, name)  # sets LMLAB_KERNELS=torch
            torch_layer = make()
            expected = torch_layer(x)
            assert calls
        calls = []
        monkeypatch.setattr(torch.ops.aten, name, lambda *args: calls.append(1))
        layer = make()
        y = layer(x)
        assert not calls and y.shape == expected.shape
        dequantized = layer.weight
        assert torch.all((y - x @ dequantized.T).abs()
                         <= rounding_bound(x.reshape(-1, 128), dequantized, qmax).reshape(2, 5, 48).float() + 1e-5)
        monkeypatch.undo()


@pytest.mark.parametrize("cause", ["cpu", "compiler", "build"])
def test_without_the_kernels_a_note_and_torchs_kernels(cause, monkeypatch, tmp_path, capsys):
    kernels.compiled.cache_clear()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing built yet
    if cause == "cpu":
        monkeypatch.setattr(kernels, "missing_cpu_flags", lambda: ["avx512_vnni"])
    elif cause == "compiler":
        monkeypatch.setattr(kernels.shutil, "which", lambda name: None)
    else:
        broken = tmp_path / "lowbit.cpp"
        broken.write_text("this is not C++\n")
        monkeypatch.setattr(kernels, "SOURCE", broken)
    try:
        assert kernels.native() is None
        layer = Int4Linear.from_float(torch.nn.Linear(64, 16), 32)
        assert not layer.native and layer(torch.randn(1, 64)).shape == (1, 16)
    finally:
        kernels.compiled.cache_clear()
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("lmlab: note: ") and "using PyTorch's low-bit kernels" in lines[-1]
    assert "Traceback" not in "".join(lines)


def greedy_logits(model: Transformer, prompt: torch.Tensor, feed: list[int] | None, steps: int = 24):
    """Logits [steps, vocab] of `steps` decode passes of the flat loop after `prompt`, fed `feed` (or the
    model's own greedy tokens), and the tokens fed."""
    cache = model.new_slot_cache(1, 64)
    cache.prefill(0, prompt.shape[1])
    token = int(model(prompt, cache=cache, last_logits_only=True).logits[0, -1].argmax())
    step, rows, fed = DecodeStep.build(model), [], []
    for i in range(steps):
        token = feed[i] if feed else token
        fed.append(token)
        cache.decode(1, [True])
        rows.append(step(torch.tensor([[token]]), cache).float())
        token = int(rows[-1].argmax())
    return torch.cat(rows), fed


@pytest.mark.parametrize("dtype", ["int8", "int4"])
@torch.inference_mode()
def test_a_decode_loop_with_the_kernels_stays_close_to_torchs_kernels(dtype, monkeypatch):
    """Greedy tokens may legitimately differ (the activations are rounded differently: a near tie of a tiny random
    model can flip), so the logits along the fp32 model's greedy tokens are compared: lmlab's kernels stay about as close
    to the fp32 model's as PyTorch's kernels do (largest deviation within 1.25x theirs; measured: int8 0.046 of
    the logits' standard deviation, both; int4 0.263 against 0.256)."""
    config = get_preset("tiny-llama").replace(d_ff=192)
    base = Transformer(config).init_weights(seed=0).eval()
    fuse_projections(base)
    spec = INT8_CHANNEL if dtype == "int8" else Int4Spec(32)
    ours = quantize_model(copy.deepcopy(base), spec)
    monkeypatch.setenv("LMLAB_KERNELS", "torch")
    theirs = quantize_model(copy.deepcopy(base), spec)
    monkeypatch.delenv("LMLAB_KERNELS")
    layers = [m for m in ours.modules() if isinstance(m, (Int4Linear, QuantizedLinear))]
    assert layers and all(m.native if isinstance(m, Int4Linear) else m.native_operands() is not None for m in layers)
    prompt = torch.randint(3, 500, (1, 12), generator=torch.Generator().manual_seed(0))
    reference, tokens = greedy_logits(base, prompt, None)
    spread = reference.std()
    errors = [(greedy_logits(model, prompt, tokens)[0] - reference).abs().max() / spread for model in (ours, theirs)]
    assert errors[0] <= 1.25 * errors[1]
