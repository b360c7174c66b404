"""Quantized checkpoints: what is on disk, and that a reloaded model computes exactly what was saved."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open

from lmlab.config import get_preset
from lmlab.errors import LmlabError
from lmlab.hub.checkpoint import load_checkpoint, save_checkpoint
from lmlab.models import Transformer
from lmlab.hub.quantized_checkpoint import QUANTIZATION_CONFIG, load_quantized, save_quantized
from lmlab.quantization.quantized_linear import QuantizedEmbedding, quantize_model
from lmlab.quantization.schemes import GRANULARITIES, SCHEMES, QuantSpec

IDS = torch.tensor([[5, 17, 3, 250, 9, 9, 411, 2]])


@pytest.fixture(scope="module")
def model() -> Transformer:
    return Transformer(get_preset("tiny-llama")).init_weights(seed=0).eval()


@pytest.mark.parametrize("include_embeddings", [True, False])
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_saved_and_loaded_int8_model_gives_identical_logits(model, tmp_path, scheme, granularity, include_embeddings):
    spec = QuantSpec(scheme, granularity, 48)  # 64 columns: a full group and a short one
    quantized = quantize_model(copy.deepcopy(model), spec, include_embeddings)
    folder = save_quantized(quantized, tmp_path / "int8")
    loaded = load_quantized(folder)
    assert torch.equal(loaded(IDS).logits, quantized(IDS).logits)
    assert not loaded.training
    assert json.loads((folder / QUANTIZATION_CONFIG).read_text()) == {
        "dtype": "int8", "scheme": scheme, "granularity": granularity,
        **({"group_size": 48} if granularity == "group" else {}), "include_embeddings": include_embeddings}
    assert isinstance(loaded.tok_emb, QuantizedEmbedding) == include_embeddings


def test_the_file_holds_int8_weights_fp32_scales_and_the_tied_table_once(model, tmp_path):
    folder = save_quantized(quantize_model(copy.deepcopy(model), QuantSpec("zeropoint", "channel")), tmp_path / "q")
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        dtypes = {name: f.get_slice(name).get_dtype() for name in f.keys()}
    assert dtypes["tok_emb.qweight"] == "I8" and dtypes["tok_emb.zero"] == "I8" and dtypes["tok_emb.scale"] == "F32"
    assert dtypes["decoder.layers.1.ffn.down.qweight"] == "I8"
    assert dtypes["decoder.final_norm.weight"] == "F32"
    assert not any(name.startswith("head.") for name in dtypes)
    fp32 = save_checkpoint(model, tmp_path / "fp32")
    ratio = (folder / "model.safetensors").stat().st_size / (fp32 / "model.safetensors").stat().st_size
    assert 0.25 < ratio < 0.28


def test_a_float_tied_head_is_stored_once_and_tied_again(model, tmp_path):
    quantized = quantize_model(copy.deepcopy(model), QuantSpec(), include_embeddings=False)
    loaded = load_quantized(save_quantized(quantized, tmp_path / "q"))
    assert loaded.head.proj.weight is loaded.tok_emb.weight


@pytest.mark.parametrize("dtype, torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_fp16_and_bf16_are_casts_saved_as_such(model, tmp_path, dtype, torch_dtype):
    cast = copy.deepcopy(model).to(torch_dtype)
    folder = save_quantized(cast, tmp_path / dtype)
    assert json.loads((folder / QUANTIZATION_CONFIG).read_text()) == {"dtype": dtype}
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert {f.get_slice(name).get_dtype() for name in f.keys()} == {"BF16" if dtype == "bf16" else "F16"}
    loaded = load_quantized(folder, torch_dtype)
    assert torch.equal(loaded(IDS).logits, cast(IDS).logits)
    assert torch.equal(load_checkpoint(folder).tok_emb.weight, cast.tok_emb.weight.float())  # a plain checkpoint too


def test_a_float_model_is_not_saved_as_quantized(model, tmp_path):
    with pytest.raises(LmlabError, match="neither quantized nor cast"):
        save_quantized(model, tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_a_users_folder_is_kept_even_when_overwriting(model, tmp_path):
    quantized = quantize_model(copy.deepcopy(model), QuantSpec())
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "mine.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(LmlabError, match=r"not empty \(mine.txt\) and was not written by lmlab"):
            save_quantized(quantized, tmp_path / "q", overwrite=overwrite)
    assert (tmp_path / "q" / "mine.txt").read_text() == "keep me"


def test_an_lmlab_model_folder_is_replaced_only_when_overwriting(model, tmp_path):
    quantized = quantize_model(copy.deepcopy(model), QuantSpec())
    save_quantized(quantized, tmp_path / "q")
    with pytest.raises(LmlabError, match="already holds an lmlab model"):
        save_quantized(quantized, tmp_path / "q")
    save_quantized(quantized, tmp_path / "q", overwrite=True)
    assert load_quantized(tmp_path / "q") is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]  # no staging or backup folder left


def _edit_config(folder, **changes) -> None:
    path = folder / QUANTIZATION_CONFIG
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_broken_quantized_folders_are_one_clear_error(model, tmp_path):
    folder = save_quantized(quantize_model(copy.deepcopy(model), QuantSpec("absmax", "group", 32)), tmp_path / "q")
    _edit_config(folder, group_size=16)
    with pytest.raises(LmlabError, match="weights do not fit"):
        load_quantized(folder)
    _edit_config(folder, group_size=32, scheme="zeropoint")
    with pytest.raises(LmlabError, match="weights do not fit.*missing"):
        load_quantized(folder)
    _edit_config(folder, dtype="int3")
    with pytest.raises(LmlabError, match="not a valid quantization config.*unknown quantization dtype 'int3'"):
        load_quantized(folder)
    (folder / QUANTIZATION_CONFIG).write_text("{not json")
    with pytest.raises(LmlabError, match="not valid JSON"):
        load_quantized(folder)
    (folder / QUANTIZATION_CONFIG).write_text('{"dtype": "int8"}')
    with pytest.raises(LmlabError, match="not a valid quantization config"):
        load_quantized(folder)
