"""The acceptance figures on the embedded SmolLM2-135M, on a short text (benchmarks/bench_quantize.py runs more)."""

from __future__ import annotations

import copy

import pytest
import torch

from lmlab.evaluation.perplexity import perplexity
from lmlab.hub.quantized_checkpoint import load_quantized, save_quantized
from lmlab.quantization.quantized_linear import quantize_model
from lmlab.hub.quantize import default_eval_text, tensor_bytes
from lmlab.quantization.schemes import QuantSpec


@pytest.fixture(scope="module")
def scored(smollm):
    ids = smollm.tokenizer.encode(default_eval_text())[:128]
    fp32 = perplexity(smollm.model, ids, max_length=128, stride=128, progress=False).ppl
    return ids, fp32


def test_int8_per_channel_checkpoint_is_under_30_percent_and_within_2_percent_perplexity(smollm, scored, tmp_path):
    ids, fp32 = scored
    quantized = quantize_model(copy.deepcopy(smollm.model), QuantSpec("absmax", "channel"))
    folder = save_quantized(quantized, tmp_path / "int8")
    fp32_bytes = 4 * sum(p.numel() for p in smollm.model.parameters())
    assert (folder / "model.safetensors").stat().st_size <= 0.30 * fp32_bytes
    assert tensor_bytes(quantized) <= 0.30 * fp32_bytes
    int8 = perplexity(load_quantized(folder), ids, max_length=128, stride=128, progress=False).ppl
    assert abs(int8 / fp32 - 1) <= 0.02


def test_bf16_is_within_1_percent_perplexity(smollm, scored):
    ids, fp32 = scored
    bf16 = perplexity(copy.deepcopy(smollm.model).to(torch.bfloat16), ids, max_length=128, stride=128,
                      progress=False).ppl
    assert abs(bf16 / fp32 - 1) <= 0.01
