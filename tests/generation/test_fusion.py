"""Fused q/k/v and gate/up projections: the fused model gives transformers' logits and the unfused
model's greedy tokens, keeps the checkpoint's state_dict keys and values, loads a state_dict with
them, and leaves layers it cannot fuse (LoRA-wrapped, GPT-2's ungated MLP) as they were; int8 and
int4 layers fuse keeping their codes and scales exactly."""

from __future__ import annotations

import pytest
import torch

from lmlab.generation import GenerationConfig, generate
from lmlab.models.fusion import fuse_projections
from lmlab.models.lora import apply_lora
from lmlab.quantization.int4 import Int4Linear, Int4Spec
from lmlab.quantization.quantized_linear import INT8_CHANNEL, quantize_model

from .conftest import random_prompts, tiny_pair


def test_fused_llama_gives_transformers_logits_and_the_unfused_tokens():
    hf_model, ours = tiny_pair("llama")
    ids = torch.tensor(random_prompts((11, 11)))
    unfused_tokens = [c.tokens for c in generate(ours, ids, GenerationConfig(max_new_tokens=20))]
    keys = {name: tensor.clone() for name, tensor in ours.state_dict().items()}
    assert fuse_projections(ours) == 4  # 2 layers x (attention + feed-forward)
    attn = ours.decoder.layers[0].attn
    assert attn.qkv_proj is not None and not hasattr(attn, "q_proj")
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf_model(ids).logits, atol=1e-4, rtol=0)
    assert [c.tokens for c in generate(ours, ids, GenerationConfig(max_new_tokens=20))] == unfused_tokens
    state = ours.state_dict()
    assert state.keys() == keys.keys()
    assert all(torch.equal(state[name], keys[name]) for name in keys)
    assert fuse_projections(ours) == 0  # already fused


def test_a_fused_model_loads_a_state_dict_with_the_separate_keys():
    _, source = tiny_pair("llama")
    _, target = tiny_pair("llama")
    with torch.no_grad():
        for param in target.parameters():
            param.zero_()
    fuse_projections(target)
    target.load_state_dict(source.state_dict())
    ids = torch.tensor(random_prompts((9,)))
    with torch.no_grad():
        torch.testing.assert_close(target(ids).logits, source(ids).logits, atol=1e-5, rtol=0)


def test_layers_that_cannot_be_fused_stay_as_they_are():
    hf_gpt2, gpt2 = tiny_pair("gpt2")
    assert fuse_projections(gpt2) == 2  # attention fuses (with its biases); the ungated MLP has nothing to fuse
    ids = torch.tensor(random_prompts((10,)))
    with torch.no_grad():
        torch.testing.assert_close(gpt2(ids).logits, hf_gpt2(ids).logits, atol=1e-4, rtol=0)
    _, llama = tiny_pair("llama")
    apply_lora(llama, targets=["q_proj", "v_proj"], rank=2, alpha=4)
    assert fuse_projections(llama) == 2  # the feed-forwards only
    assert llama.decoder.layers[0].attn.qkv_proj is None


@pytest.mark.parametrize("spec", [Int4Spec(32), INT8_CHANNEL], ids=["int4", "int8"])
def test_quantized_layers_fuse_keeping_their_codes(spec):
    _, ours = tiny_pair("llama")
    quantize_model(ours, spec)
    ids = torch.tensor(random_prompts((11,)))
    attn, ffn = ours.decoder.layers[0].attn, ours.decoder.layers[1].ffn
    parts = [(attn.q_proj, attn.k_proj, attn.v_proj), (ffn.gate, ffn.up)]
    codes = [[_codes(layer) for layer in layers] for layers in parts]
    with torch.no_grad():
        unfused = ours(ids).logits
    keys = {name: tensor.clone() for name, tensor in ours.state_dict().items()}
    assert fuse_projections(ours) == 4
    assert type(attn.qkv_proj) is type(attn.o_proj) and type(ffn.gate_up) is type(ffn.down)
    for fused, separate in zip((attn.qkv_proj, ffn.gate_up), codes):
        for got, expected in zip(_codes(fused), zip(*separate)):
            assert torch.equal(got, torch.cat(expected))  # the parts' codes and scales, row after row
    with torch.no_grad():  # each output row reads its own codes: the same products, up to the kernel's blocking
        torch.testing.assert_close(ours(ids).logits, unfused, atol=1e-5, rtol=1e-5)
    state = ours.state_dict()  # the checkpoint's keys, split from the fused layers
    assert state.keys() == keys.keys()
    assert all(torch.equal(state[name], keys[name]) for name in keys)


def _codes(layer) -> tuple[torch.Tensor, ...]:
    if isinstance(layer, Int4Linear):
        quantized = layer.quantized()
        return quantized.q, quantized.scale, quantized.offset
    return layer.qweight, layer.scale
