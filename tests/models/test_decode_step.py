"""The flat decode loop (lmlab.models.decode_step) gives the module path's logits and KV cache bitwise, in
fp32, bf16, int8 and int4, for one row and for several rows of different lengths (masked attention);
for a Llama (rotary, GQA, fused gate/up) and a GPT-2 (learned positions, LayerNorm, ungated MLP); and
declines models it does not run (unfused projections)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmlab.config import get_preset
from lmlab.models import Transformer
from lmlab.models.decode_step import DecodeStep, single_row_linear
from lmlab.models.fusion import fuse_projections
from lmlab.quantization.int4 import Int4Spec
from lmlab.quantization.quantized_linear import INT8_CHANNEL, quantize_model


def _model(preset: str, dtype: str) -> Transformer:
    config = get_preset(preset)
    if preset == "tiny-llama":
        config = config.replace(d_ff=192)  # a multiple of int4's group size
    model = Transformer(config).init_weights(seed=0).eval()
    fuse_projections(model)
    if dtype == "int8":
        quantize_model(model, INT8_CHANNEL)
    elif dtype == "int4":
        quantize_model(model, Int4Spec(32))
    elif dtype == "bf16":
        model.to(torch.bfloat16)
    return model


def _prefilled(model: Transformer, prompts: list[list[int]]):
    cache = model.new_slot_cache(len(prompts), 64)
    for slot, prompt in enumerate(prompts):
        cache.prefill(slot, len(prompt))
        model(torch.tensor([prompt]), cache=cache, last_logits_only=True)
    return cache


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "int8", "int4"])
@torch.inference_mode()
def test_the_flat_loop_gives_the_module_paths_logits_and_cache_bitwise(preset, dtype):
    model = _model(preset, dtype)
    step = DecodeStep.build(model)
    assert step is not None
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 500, (n,), generator=generator).tolist() for n in (7, 19, 2)]
    plain, flat = _prefilled(model, prompts), _prefilled(model, prompts)
    # three rows of different lengths (a mask), then the first row alone (a slice write, no mask)
    for n_rows, active in [(3, [True, True, True]), (3, [True, False, True]), (1, [True]), (1, [True])]:
        ids = torch.randint(3, 500, (n_rows, 1), generator=generator)
        plain.decode(n_rows, active)
        flat.decode(n_rows, active)
        expected = model(ids, cache=plain).logits[:, -1]
        got = step(ids, flat)
        assert got.dtype == expected.dtype and torch.equal(got, expected)
        assert plain.lengths == flat.lengths
    for keys, values, flat_keys, flat_values in zip(plain.keys, plain.values, flat.keys, flat.values):
        assert torch.equal(keys, flat_keys) and torch.equal(values, flat_values)


def test_one_bf16_row_by_mv_equals_f_linear():
    torch.manual_seed(0)
    linear = nn.Linear(576, 960).to(torch.bfloat16)
    x = torch.randn(1, 1, 576, dtype=torch.bfloat16)
    forward = single_row_linear(linear)
    assert torch.equal(forward(x), F.linear(x, linear.weight, linear.bias))
    rows = torch.randn(2, 1, 576, dtype=torch.bfloat16)  # more than one row: F.linear itself
    assert torch.equal(forward(rows), F.linear(rows, linear.weight, linear.bias))


def test_an_unfused_model_keeps_the_module_path():
    model = Transformer(get_preset("tiny-llama")).init_weights(seed=0).eval()
    assert DecodeStep.build(model) is None
    assert "not fused" in DecodeStep.unsupported(model)
