"""int4 group-wise weights: the formula, the CPU kernel against the dequantized matmul, the portable state dict,
whole models, checkpoints, loading with --dtype, and the bad-input lines."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from lowbit_kernels import BF16_EPS, spy_kernel
from lmlab.cli.main import main
from lmlab.config import get_preset
from lmlab.errors import LmlabError
from lmlab.hub.checkpoint import save_checkpoint
from lmlab.hub.resolve import load_model
from lmlab.models import Transformer
from lmlab.hub.quantized_checkpoint import QUANTIZATION_CONFIG, load_quantized, save_quantized
from lmlab.quantization.int4 import (GROUP_SIZES, PACK_ROWS, Int4Linear, Int4Spec, kernel_operands, pack_nibbles,
                                     quantize_int4, unpack_nibbles)
from lmlab.quantization.quantized_linear import (QuantizedEmbedding, QuantizedLinear, TiedQuantizedLinear,
                                                 quantize_model)
from lmlab.quantization.weight_format import WeightFormat

IDS = torch.tensor([[5, 17, 3, 250, 9, 9, 411, 2]])


def kernel_bound(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """How far the int4 kernel may be from x Ŵᵀ computed in fp32 with the same (bf16) scales and offsets: it
    rounds x and its output to bf16, each at most 2^-9 relative: |y - x Ŵᵀ| <= 2^-8 Σ_j |x_j| |ŵ_ij|."""
    return BF16_EPS * (x.abs() @ weight.abs().T) + 1e-6


def tiny_config(**changes):
    """tiny-llama with a feed-forward width the int4 kernel takes (its 172 is not a multiple of 16)."""
    return dataclasses.replace(get_preset("tiny-llama"), d_ff=128, **changes)


@pytest.fixture(scope="module")
def model() -> Transformer:
    return Transformer(tiny_config()).init_weights(seed=0).eval()


def test_codes_scales_and_offsets_follow_the_min_max_formula():
    values = [-1.0 + 3.0 * i / 31 for i in range(32)]  # one group from -1 to 2
    quantized = quantize_int4(torch.tensor([values]), 32)
    step = 3.0 / 15
    assert quantized.scale.item() == pytest.approx(step)
    assert quantized.offset.item() == pytest.approx(-1.0 + 8 * step)  # z = min + 8 s
    assert quantized.q[0].tolist() == [round((v + 1.0) / step) for v in values]
    dequantized = quantized.dequantize()[0]
    assert dequantized[0].item() == pytest.approx(-1.0) and dequantized[-1].item() == pytest.approx(2.0)
    assert max(abs(a - b) for a, b in zip(dequantized.tolist(), values)) <= step / 2 + 1e-6
    constant = quantize_int4(torch.full((1, 32), 0.25), 32)  # a constant group is stored exactly
    assert torch.equal(constant.dequantize(), torch.full((1, 32), 0.25))


def test_nibbles_pack_two_codes_per_byte_low_first():
    codes = torch.tensor([[1, 2, 15, 0]], dtype=torch.uint8)
    assert pack_nibbles(codes).tolist() == [[1 + 2 * 16, 15]]
    assert torch.equal(unpack_nibbles(pack_nibbles(codes)), codes)


@pytest.mark.parametrize("group_size", GROUP_SIZES)
@pytest.mark.parametrize("rows", [1, 3, 17])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_int4_kernel_matches_the_dequantized_matmul(group_size, rows, dtype, monkeypatch):
    calls = spy_kernel(monkeypatch, "_weight_int4pack_mm_for_cpu")
    torch.manual_seed(0)
    linear = nn.Linear(256, 48)
    layer = Int4Linear.from_float(linear, group_size)
    x = torch.randn(2, rows, 256).to(dtype)
    y = layer(x)
    assert calls and y.dtype == dtype and y.shape == (2, rows, 48)
    # the reference: the formula's codes with bf16 scales and offsets, dequantized and multiplied in fp32
    dequantized = quantize_int4(linear.weight, group_size).to(torch.bfloat16).dequantize()
    reference = F.linear(x.float(), dequantized, linear.bias)
    bound = kernel_bound(x.float(), dequantized) + (BF16_EPS * reference.abs() if dtype == torch.bfloat16 else 0)
    assert torch.all((y.float() - reference).abs() <= bound)
    # and the float layer is within half a step per weight (plus that)
    half_steps = (quantize_int4(linear.weight, group_size).scale / 2).repeat_interleave(group_size, dim=1)
    assert torch.all((y.float() - linear(x.float())).abs() <= x.float().abs() @ half_steps.T + 2 * bound)


def test_the_state_dict_holds_the_formulas_codes_in_the_portable_layout():
    torch.manual_seed(0)
    linear = nn.Linear(128, 32, bias=False)
    layer = Int4Linear.from_float(linear, 32)
    state = layer.state_dict()
    expected = quantize_int4(linear.weight, 32)
    assert torch.equal(state["qweight"], pack_nibbles(expected.q))  # read back exactly from the kernel's layout
    assert torch.equal(state["scale"], expected.scale.to(torch.bfloat16))
    assert torch.equal(state["offset"], expected.offset.to(torch.bfloat16))
    copy_ = Int4Linear(128, 32, bias=False, group_size=32)
    copy_.load_state_dict(state)
    x = torch.randn(4, 128)
    assert torch.equal(copy_(x), layer(x))
    torch.testing.assert_close(layer.weight, expected.to(torch.bfloat16).dequantize())


def test_a_whole_model_computes_what_its_dequantized_copy_computes(model):
    quantized = quantize_model(copy.deepcopy(model), Int4Spec(32))
    assert not any(type(m) in (nn.Linear, nn.Embedding) for m in quantized.modules())
    # the embedding and the tied head, the layers most sensitive to rounding, stay int8 per channel
    assert isinstance(quantized.tok_emb, QuantizedEmbedding) and isinstance(quantized.head.proj, TiedQuantizedLinear)
    assert quantized.tok_emb.spec.granularity == "channel" and quantized.head.proj.embedding is quantized.tok_emb
    dequantized = copy.deepcopy(model)  # the same weights, in fp32
    for name, module in quantized.named_modules():
        if isinstance(module, Int4Linear):
            dequantized.get_submodule(name).weight.data = module.weight
    dequantized.tok_emb.weight.data = quantized.tok_emb.weight
    logits, reference = quantized(IDS).logits, dequantized(IDS).logits
    assert (logits - reference).abs().max() <= 0.02 * reference.abs().max()  # bf16 kernel inputs, 2 layers
    assert (logits - model(IDS).logits).abs().max() > (logits - reference).abs().max()  # it really is int4


@pytest.mark.parametrize("include_embeddings", [True, False])
def test_quantize_save_load_gives_identical_logits_and_half_a_byte_per_weight(model, tmp_path, include_embeddings):
    quantized = quantize_model(copy.deepcopy(model), Int4Spec(64), include_embeddings)
    folder = save_quantized(quantized, tmp_path / "int4")
    assert json.loads((folder / QUANTIZATION_CONFIG).read_text()) == {
        "dtype": "int4", "group_size": 64, "include_embeddings": include_embeddings}
    loaded = load_quantized(folder)
    assert torch.equal(loaded(IDS).logits, quantized(IDS).logits)
    assert isinstance(loaded.decoder.layers[1].ffn.down, Int4Linear)
    if include_embeddings:
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            dtypes = {name: f.get_slice(name).get_dtype() for name in f.keys()}
        assert dtypes["decoder.layers.0.attn.q_proj.qweight"] == "U8"
        assert dtypes["decoder.layers.0.attn.q_proj.scale"] == "BF16" and dtypes["tok_emb.qweight"] == "I8"
        assert not any(name.startswith("head.") for name in dtypes)
        table = model.tok_emb.weight.numel()
        others = sum(p.numel() for p in model.parameters()) - table
        expected = table * (1 + 4 / 64) + others * (0.5 + 4 / 64)  # int8 + fp32 row scales; int4 + 2 bf16 per 64
        stored = sum(t.numel() * t.element_size() for t in load_file(str(folder / "model.safetensors")).values())
        assert expected < stored < 1.02 * expected  # and the fp32 norms


def test_load_model_quantizes_on_load_and_a_low_bit_folder_keeps_its_format(model, tmp_path):
    folder = save_checkpoint(model, tmp_path / "fp32")
    int4 = load_model(str(folder), dtype="int4", group_size=32).model
    assert isinstance(int4.decoder.layers[0].attn.q_proj, Int4Linear) and int4.decoder.layers[0].ffn.up.group_size == 32
    assert int4.decoder.final_norm.weight.dtype == torch.bfloat16  # the kernels' input dtype, end to end
    int8 = load_model(str(folder), dtype="int8").model
    assert isinstance(int8.decoder.layers[0].attn.q_proj, QuantizedLinear)
    saved = save_quantized(quantize_model(copy.deepcopy(model), Int4Spec(32)), tmp_path / "int4")
    again = load_model(str(saved), dtype="int4").model  # the int4 weights as written, bf16 activations
    assert torch.equal(again(IDS).logits, int4(IDS).logits)
    assert load_model(str(saved)).model(IDS).logits.dtype == torch.float32  # fp32 activations when asked
    with pytest.raises(LmlabError, match="holds int4 weights, not int8: load it with --dtype int4"):
        load_model(str(saved), dtype="int8")


@pytest.mark.parametrize("dtype, group_size, message", [
    ("int3", None, "unknown dtype 'int3'"),
    ("int4", 48, "unsupported int4 group size 48: choose from 32, 64, 128"),
    ("int8", 64, "--group-size applies to --dtype int4, not int8"),
])
def test_unsupported_dtypes_and_group_sizes_are_refused(dtype, group_size, message):
    with pytest.raises(LmlabError, match=message):
        WeightFormat.parse(dtype, group_size)


def test_shapes_the_kernel_cannot_take_name_the_layer_and_why(model):
    with pytest.raises(LmlabError, match=r"layer decoder\.layers\.0\.attn\.q_proj: in_features 64 is not a multiple "
                                         r"of the group size 128; --group-size 64 fits"):
        quantize_model(copy.deepcopy(model), Int4Spec(128))
    odd = Transformer(get_preset("tiny-llama")).init_weights(seed=0)  # d_ff 172
    with pytest.raises(LmlabError, match=r"layer decoder\.layers\.0\.ffn\.\w+: out_features 172 is not a multiple "
                                         r"of 16"):
        quantize_model(odd, Int4Spec(32))
    assert isinstance(odd.decoder.layers[0].attn.q_proj, nn.Linear)  # refused before any layer was swapped


@pytest.mark.parametrize("argv, message", [
    (["--dtype", "int5"], "unknown dtype 'int5'"),
    (["--dtype", "int4", "--group-size", "100"], "unsupported int4 group size 100"),
    # the inference commands fuse q/k/v into qkv_proj before quantizing (lmlab.models.fusion)
    (["--dtype", "int4", "--group-size", "128"], "int4 cannot quantize layer decoder.layers.0.attn.qkv_proj: "
                                                 "in_features 64 is not a multiple of the group size 128"),
])
def test_bad_dtype_options_are_one_line_from_every_loading_command(capsys, model, tmp_path, argv, message):
    folder = save_checkpoint(model, tmp_path / "fp32")
    text = tmp_path / "text.txt"
    text.write_text("one two three")
    for command in (["generate", str(folder), "--prompt", "hi"],
                    ["evaluate", str(folder), "--metric", "perplexity", "--data", str(text)]):
        assert main([*command, *argv]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (command, err)


def test_lmlab_quantize_writes_an_int4_checkpoint_that_loads_back_int4(capsys, model, tmp_path):
    folder = save_checkpoint(model, tmp_path / "fp32")
    assert main(["quantize", str(folder), "--dtype", "int4", "--group-size", "64", "--out", str(tmp_path / "q4"),
                 "--no-eval"]) == 0
    assert "after (int4, groups of 64)" in capsys.readouterr().out
    loaded = load_model(str(tmp_path / "q4")).model
    assert isinstance(loaded.decoder.layers[0].ffn.up, Int4Linear) and loaded.decoder.layers[1].attn.v_proj.group_size == 64
    assert isinstance(loaded.tok_emb, QuantizedEmbedding)


def test_packing_in_row_chunks_gives_the_kernels_own_layout():
    quantized = quantize_int4(torch.randn(PACK_ROWS + 80, 64, generator=torch.Generator().manual_seed(0)), 32)
    packed, _ = kernel_operands(quantized)
    whole = torch.ops.aten._convert_weight_to_int4pack_for_cpu(quantized.q.to(torch.int32), 1)
    assert torch.equal(packed, whole)
