"""GGUF block formats loaded low-bit: Q4_0 / Q4_1 as int4 groups of 32 (exactly), whole files as int8 and int4."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmlab.config import get_preset
from lmlab.hub.gguf import _unpermute_rotary, int4_from_blocks
from lmlab.hub.gguf_export import write_gguf
from lmlab.hub.resolve import load_model
from lmlab.models import Transformer
from lmlab.quantization.int4 import Int4Linear
from lmlab.quantization.quantized_linear import QuantizedEmbedding, QuantizedLinear, TiedQuantizedLinear
from lowbit_kernels import BF16_EPS, spy_kernel
from tiny import tiny_tokenizer

CONFIG = get_preset("tiny-llama").replace(d_ff=128, max_seq_len=256)  # n_head 4, n_kv_head 2, d_model 64
Q4 = [gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q4_1]


def write_tensors(path, tensors: dict[str, tuple[np.ndarray, gguf.GGMLQuantizationType]]) -> gguf.GGUFReader:
    writer = gguf.GGUFWriter(str(path), "llama")
    for name, (values, qtype) in tensors.items():
        writer.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return gguf.GGUFReader(str(path))


@pytest.mark.parametrize("qtype", Q4, ids=lambda t: t.name)
@pytest.mark.parametrize("name, rows, heads", [("blk.0.ffn_up.weight", 128, None),
                                               ("blk.0.attn_q.weight", 64, CONFIG.n_head),
                                               ("blk.0.attn_k.weight", 32, CONFIG.n_kv_head)])
def test_a_q4_tensor_loaded_as_int4_gives_the_matmul_of_its_dequantized_values(tmp_path, qtype, name, rows, heads,
                                                                                monkeypatch):
    weight = np.random.default_rng(0).normal(0, 0.05, (rows, 64)).astype(np.float32)
    tensor = write_tensors(tmp_path / "t.gguf", {name: (weight, qtype)}).tensors[0]
    assert tensor.tensor_type == qtype
    dequantized = gguf.quants.dequantize(tensor.data, qtype).reshape(rows, 64)  # gguf's own dequantizer
    if heads:
        dequantized = _unpermute_rotary(dequantized, heads)  # what the float loader does to q and k
    dequantized = torch.from_numpy(np.ascontiguousarray(dequantized))
    blocks = int4_from_blocks(tensor, CONFIG)
    assert blocks.group_size == 32
    torch.testing.assert_close(blocks.dequantize(), dequantized, atol=1e-6, rtol=0)  # the mapping is exact
    calls = spy_kernel(monkeypatch, "_weight_int4pack_mm_for_cpu")
    layer = Int4Linear(64, rows, bias=False, group_size=32)
    layer.store(blocks)
    x = torch.randn(5, 64)
    y = layer(x)
    assert calls
    # the kernel holds d and m in bf16 (2^-9 relative each) and rounds x and y to bf16 (2^-9 each)
    with_bf16_scales = blocks.to(torch.bfloat16).dequantize()
    assert torch.all((y - F.linear(x, with_bf16_scales)).abs() <= BF16_EPS * (x.abs() @ with_bf16_scales.abs().T)
                     + 1e-6)
    bound = 2 * BF16_EPS * (x.abs() @ (blocks.scale.abs().repeat_interleave(32, 1) * 8
                                       + blocks.offset.abs().repeat_interleave(32, 1)).T)
    assert torch.all((y - F.linear(x, dequantized)).abs() <= bound + 1e-6)


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("lowbit")
    model = Transformer(CONFIG).init_weights(seed=1).eval()
    return write_gguf(model, tiny_tokenizer(root / "tok", chat=True), root / "tiny.Q4_0.gguf", "q4_0")


def test_a_q4_0_file_loads_as_int4_keeping_its_blocks_and_as_int8(gguf_file):
    ids = torch.tensor([[5, 17, 3, 250, 9, 9, 311, 2]])
    reference = load_model(str(gguf_file)).model(ids).logits  # dequantized to fp32
    int4 = load_model(str(gguf_file), dtype="int4").model
    assert isinstance(int4.decoder.layers[0].attn.q_proj, Int4Linear)
    assert isinstance(int4.tok_emb, QuantizedEmbedding) and isinstance(int4.head.proj, TiedQuantizedLinear)
    assert {m.group_size for m in int4.modules() if isinstance(m, Int4Linear)} == {32}  # the file's blocks
    assert (int4(ids).logits - reference).abs().max() <= 0.01 * reference.abs().max()  # bf16 kernel roundings
    int8 = load_model(str(gguf_file), dtype="int8").model
    assert isinstance(int8.decoder.layers[1].ffn.down, QuantizedLinear) and isinstance(int8.tok_emb,
                                                                                        QuantizedEmbedding)
    assert (int8(ids).logits - reference).abs().max() <= 0.02 * reference.abs().max()  # requantized per channel
