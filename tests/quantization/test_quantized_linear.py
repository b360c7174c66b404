"""Int8 layers against the float layers they replace, and the swap over whole lmlab models."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit_kernels import BF16_EPS, spy_kernel
from lmlab.config import get_preset
from lmlab.models import Transformer
from lmlab.quantization.quantized_linear import (QuantizedEmbedding, QuantizedLinear, TiedQuantizedLinear,
                                                 quantize_model)
from lmlab.hub.quantize import tensor_bytes
from lmlab.quantization.schemes import GRANULARITIES, SCHEMES, QuantSpec

ALL_SPECS = [QuantSpec(scheme, granularity, 32) for scheme in SCHEMES for granularity in GRANULARITIES]


def kernel_bound(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """How far the int8 kernel may be from x Ŵᵀ in fp32: it rounds x, the scales and its output to bf16,
    each at most 2^-9 relative, so |y - x Ŵᵀ| <= 3 · 2^-9 · Σ_j |x_j| |ŵ_ij| (< 2^-7 · Σ_j |x_j| |ŵ_ij|)."""
    return 2 * BF16_EPS * (x.abs() @ weight.abs().T) + 1e-6


def tiny(preset: str = "tiny-llama") -> Transformer:
    return Transformer(get_preset(preset)).init_weights(seed=0).eval()


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: f"{s.scheme}-{s.granularity}")
def test_quantized_linear_is_within_the_rounding_bound_of_the_float_linear(spec):
    torch.manual_seed(0)
    linear = nn.Linear(96, 48)
    x = torch.randn(5, 7, 96)
    layer = QuantizedLinear.from_float(linear, spec)
    y, reference = layer(x), linear(x)
    dequantized = layer.quantized.dequantize()
    # |x · (w - ŵ)| <= Σ_j |x_j| · scale_ij / 2, element by element, plus the kernel's bf16 roundings
    half_steps = layer.quantized.element_scales() / 2
    kernel = kernel_bound(x, dequantized) if spec.granularity != "group" else 1e-5
    assert torch.all((y - reference).abs() <= x.abs() @ half_steps.T + kernel)
    assert (y - reference).abs().max() > 0  # it really is rounded
    assert torch.all((y - F.linear(x, dequantized, linear.bias)).abs() <= kernel)


@pytest.mark.parametrize("spec", [QuantSpec(scheme, granularity) for scheme in SCHEMES for granularity in
                                  ("channel", "tensor")], ids=lambda s: f"{s.scheme}-{s.granularity}")
@pytest.mark.parametrize("rows", [1, 3, 17])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_int8_kernel_matches_the_dequantized_matmul(spec, rows, dtype, monkeypatch):
    calls = spy_kernel(monkeypatch, "_weight_int8pack_mm")
    torch.manual_seed(0)
    layer = QuantizedLinear.from_float(nn.Linear(96, 40), spec)
    x = torch.randn(rows, 96).to(dtype)
    y = layer(x)
    assert calls and y.dtype == dtype
    # the reference: x (as given, in fp32) times the matrix dequantized in fp32, plus the bias
    reference = F.linear(x.float(), layer.quantized.dequantize(), layer.bias)
    assert torch.all((y.float() - reference).abs() <= kernel_bound(x.float(), layer.quantized.dequantize())
                     + (BF16_EPS * reference.abs() if dtype == torch.bfloat16 else 0))


def test_quantized_embedding_looks_up_rows_of_the_dequantized_table():
    torch.manual_seed(0)
    embedding = nn.Embedding(50, 24)
    ids = torch.tensor([[1, 2, 49], [0, 2, 2]])
    for spec in ALL_SPECS:
        table = QuantizedEmbedding.from_float(embedding, QuantSpec(spec.scheme, spec.granularity, 8))
        assert torch.equal(table(ids), table.weight[ids])
        torch.testing.assert_close(table(ids), embedding(ids), atol=table.scale.max().item() / 2, rtol=0)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2", "tiny-bert", "tiny-t5"])
def test_quantize_model_replaces_every_linear_and_keeps_the_logits_close(preset):
    model = tiny(preset)
    ids = torch.randint(0, 500, (2, 16), generator=torch.Generator().manual_seed(0))
    extra = {"decoder_input_ids": ids} if preset == "tiny-t5" else {}
    reference = model(ids, **extra).logits
    quantized = quantize_model(copy.deepcopy(model), QuantSpec("absmax", "channel"))
    assert not any(type(m) in (nn.Linear, nn.Embedding) and name in ("tok_emb", "head.proj")
                   for name, m in quantized.named_modules())
    assert not any(type(m) is nn.Linear for m in quantized.modules())
    logits = quantized(ids, **extra).logits
    assert (logits - reference).abs().max() < 0.02 * reference.abs().max()
    assert isinstance(quantized.tok_emb, QuantizedEmbedding)
    assert isinstance(quantized.head.proj, TiedQuantizedLinear)  # all four presets tie their head


def test_a_tied_head_reads_the_one_int8_table():
    quantized = quantize_model(tiny(), QuantSpec())
    assert quantized.head.proj.embedding is quantized.tok_emb
    copied = copy.deepcopy(quantized)
    assert copied.head.proj.embedding is copied.tok_emb  # a copy reads its own table
    names = list(quantized.state_dict())
    assert "tok_emb.qweight" in names and not any(name.startswith("head.") for name in names)
    hidden = torch.randn(1, 3, quantized.config.d_model)
    table = quantized.tok_emb.weight
    assert torch.all((quantized.head(hidden) - hidden @ table.T).abs() <= kernel_bound(hidden, table))


def test_skipping_the_embeddings_keeps_them_float_and_tied():
    model = quantize_model(tiny(), QuantSpec(), include_embeddings=False)
    assert type(model.tok_emb) is nn.Embedding and model.head.proj.weight is model.tok_emb.weight
    assert isinstance(model.decoder.layers[0].attn.q_proj, QuantizedLinear)


def test_int8_weights_take_about_a_quarter_of_fp32():
    model = tiny()
    fp32 = tensor_bytes(model)
    channel = tensor_bytes(quantize_model(copy.deepcopy(model), QuantSpec("absmax", "channel")))
    group = tensor_bytes(quantize_model(copy.deepcopy(model), QuantSpec("zeropoint", "group", 32)))
    skipped = tensor_bytes(quantize_model(copy.deepcopy(model), QuantSpec(), include_embeddings=False))
    n_params = sum(p.numel() for p in model.parameters())
    assert fp32 == 4 * n_params
    assert 0.25 < channel / fp32 < 0.27
    assert channel < group < 0.30 * fp32  # a scale and a zero point per 32 weights: 5/32 byte more per weight
    assert skipped > 0.4 * fp32  # the tiny model's embedding is a third of its weights


def test_casting_the_model_keeps_int8_weights_and_computes_in_the_new_dtype():
    model = quantize_model(tiny(), QuantSpec("zeropoint", "group", 32)).to(torch.bfloat16)
    layer = model.decoder.layers[0].ffn.up
    assert layer.qweight.dtype == torch.int8 and layer.zero.dtype == torch.int8 and layer.scale.dtype == torch.bfloat16
    assert model(torch.tensor([[1, 2, 3]])).logits.dtype == torch.bfloat16


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: f"{s.scheme}-{s.granularity}")
def test_bf16_activations_give_the_fp32_result_to_bf16_precision(spec, monkeypatch):
    calls = spy_kernel(monkeypatch, "_weight_int8pack_mm")
    torch.manual_seed(0)
    layer = QuantizedLinear.from_float(nn.Linear(96, 200), spec)
    x = torch.randn(3, 5, 96)
    reference = layer(x)
    y = layer.to(torch.bfloat16)(x.bfloat16())
    assert y.dtype == torch.bfloat16 and y.shape == reference.shape
    torch.testing.assert_close(y.float(), reference, atol=0.01, rtol=0.01)
    assert bool(calls) == (spec.granularity != "group")  # one scale per row: the int8 kernel


def test_rows_the_kernel_cannot_load_are_dequantized_instead():
    torch.manual_seed(0)
    layer = QuantizedLinear.from_float(nn.Linear(40, 16), QuantSpec())  # 40 columns: not a multiple of 16
    x = torch.randn(2, 40)
    torch.testing.assert_close(layer(x), F.linear(x, layer.quantized.dequantize(), layer.bias))
