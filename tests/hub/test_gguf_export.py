"""GGUF export: the written file, read back with the `gguf` package's own reader, holds every weight of the
model (within the number format's rounding) and the metadata llama.cpp needs; bad requests are refused
before anything is written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from lmlab.cli.main import main
from lmlab.config import get_preset
from lmlab.errors import LmlabError
from lmlab.hub.checkpoint import save_checkpoint
from lmlab.hub.export import export_model
from lmlab.hub.gguf import _unpermute_rotary
from lmlab.hub.resolve import load_model
from lmlab.models import Transformer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny import CHATML, tiny_tokenizer  # noqa: E402

# Rows of 64 and 192: every matrix splits into the 32-weight blocks of q8_0 and q4_0.
CONFIGS = {
    "llama": get_preset("tiny-llama").replace(d_ff=192, max_seq_len=256),
    "gpt2": get_preset("tiny-gpt2").replace(max_seq_len=256, bos_token_id=None, eos_token_id=None),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf")
    tokenizer = tiny_tokenizer(root / "tok", chat=True)
    return {arch: save_checkpoint(Transformer(config).init_weights(seed=1).eval(), root / arch, tokenizer)
            for arch, config in CONFIGS.items()}


def field(reader: gguf.GGUFReader, key: str):
    found = reader.get_field(key)
    assert found is not None, f"missing metadata key {key}"
    return found.contents()


def expected_tensors(model: Transformer, arch: str) -> dict[str, torch.Tensor]:
    """The GGUF names llama.cpp's converter gives the model's weights (layouts undone on read, below)."""
    state, c = model.state_dict(), model.config
    out = {"token_embd.weight": state["tok_emb.weight"], "output_norm.weight": state["decoder.final_norm.weight"]}
    for i in range(c.n_layer):
        p = f"decoder.layers.{i}."
        if arch == "llama":
            names = {"attn_q": "attn.q_proj", "attn_k": "attn.k_proj", "attn_v": "attn.v_proj",
                     "attn_output": "attn.o_proj", "ffn_gate": "ffn.gate", "ffn_up": "ffn.up", "ffn_down": "ffn.down",
                     "attn_norm": "attn_norm", "ffn_norm": "ffn_norm"}
            out |= {f"blk.{i}.{g}.weight": state[f"{p}{ours}.weight"] for g, ours in names.items()}
        else:
            names = {"attn_output": "attn.o_proj", "ffn_up": "ffn.up", "ffn_down": "ffn.down", "attn_norm": "attn_norm",
                     "ffn_norm": "ffn_norm"}
            for part in ("weight", "bias"):
                out |= {f"blk.{i}.{g}.{part}": state[f"{p}{ours}.{part}"] for g, ours in names.items()}
                out[f"blk.{i}.attn_qkv.{part}"] = torch.cat([state[f"{p}attn.{x}_proj.{part}"] for x in "qkv"])
    if arch == "gpt2":
        out |= {"position_embd.weight": state["decoder.learned_pos.weight"],
                "output_norm.bias": state["decoder.final_norm.bias"], "output.weight": state["tok_emb.weight"]}
    return out


def stored(tensor, arch: str, config) -> np.ndarray:
    """A tensor as the file holds it, dequantized, with llama.cpp's rotary interleaving undone."""
    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    values = np.asarray(values, dtype=np.float32).reshape([int(n) for n in reversed(tensor.shape)])
    if arch == "llama" and tensor.name.endswith("attn_q.weight"):
        values = _unpermute_rotary(values, config.n_head)
    if arch == "llama" and tensor.name.endswith("attn_k.weight"):
        values = _unpermute_rotary(values, config.n_kv_head)
    return values


def block_tolerance(x: np.ndarray, outtype: str) -> np.ndarray:
    """Per-weight error bound of a 32-weight block format with scale d stored in f16 (relative error 2^-11,
    times at most 127 or 8 codes): q8_0, d = max|x| / 127, half a step, d·(1/2 + 127·2^-11); q4_0,
    d = max|x| / 8, the code opposite the extreme is clipped a whole step, d·(1 + 8·2^-11)."""
    amax = np.abs(x.reshape(-1, 32)).max(axis=1, keepdims=True)
    step = amax / 127 * (0.5 + 127 / 2048) if outtype == "q8_0" else amax / 8 * (1 + 8 / 2048)
    return np.broadcast_to(step + 1e-7, (x.size // 32, 32)).reshape(x.shape)


@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0", "q4_0"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_every_tensor_read_back(checkpoints, tmp_path, arch, outtype):
    model = load_model(str(checkpoints[arch])).model
    path = export_model(str(checkpoints[arch]), tmp_path / "out", "gguf", outtype)
    reader = gguf.GGUFReader(path)
    want = expected_tensors(model, arch)
    assert sorted(t.name for t in reader.tensors) == sorted(want)
    for tensor in reader.tensors:
        x = want[tensor.name].float()
        got = stored(tensor, arch, model.config)
        assert got.shape == tuple(x.shape), tensor.name
        if x.ndim == 1 or tensor.name == "position_embd.weight" or outtype == "f32":
            assert tensor.tensor_type == gguf.GGMLQuantizationType.F32, tensor.name
            np.testing.assert_array_equal(got, x.numpy(), err_msg=tensor.name)
        elif outtype in ("f16", "bf16"):
            rounded = x.to(torch.float16 if outtype == "f16" else torch.bfloat16).float().numpy()
            np.testing.assert_array_equal(got, rounded, err_msg=tensor.name)
        else:
            assert tensor.tensor_type.name.lower() == outtype
            assert (np.abs(got - x.numpy()) <= block_tolerance(x.numpy(), outtype)).all(), tensor.name


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_metadata(checkpoints, tmp_path, arch):
    loaded = load_model(str(checkpoints[arch]))
    c, tok = loaded.model.config, loaded.tokenizer
    reader = gguf.GGUFReader(export_model(str(checkpoints[arch]), tmp_path / "out", "gguf", "q8_0", name="tiny"))
    assert field(reader, "general.architecture") == arch
    assert field(reader, "general.name") == "tiny"
    assert field(reader, "general.file_type") == 7  # llama.cpp's LLAMA_FTYPE_MOSTLY_Q8_0
    expected = {"context_length": c.max_seq_len, "embedding_length": c.d_model, "block_count": c.n_layer,
                "feed_forward_length": c.d_ff, "attention.head_count": c.n_head}
    if arch == "llama":
        expected |= {"attention.head_count_kv": c.n_kv_head, "rope.dimension_count": c.d_head,
                     "rope.freq_base": c.rope_theta, "attention.layer_norm_rms_epsilon": c.norm_eps,
                     "vocab_size": c.vocab_size}
    else:
        expected |= {"attention.layer_norm_epsilon": c.norm_eps}
    for key, value in expected.items():
        assert field(reader, f"{arch}.{key}") == pytest.approx(value), key
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == c.vocab_size  # 400 tokens, then unused padding up to the embedding rows
    assert tokens[:tok.vocab_size] == [tok.id_to_token(i) for i in range(tok.vocab_size)]
    types = field(reader, "tokenizer.ggml.token_type")
    specials = {tok.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    assert all(types[i] == gguf.TokenType.CONTROL for i in specials)
    assert all(types[i] == gguf.TokenType.NORMAL for i in range(tok.vocab_size) if i not in specials)
    assert set(types[tok.vocab_size:]) == {gguf.TokenType.UNUSED}
    merges = json.loads(tok.backend.to_str())["model"]["merges"]
    assert field(reader, "tokenizer.ggml.merges") == [" ".join(m) if isinstance(m, list) else m for m in merges]
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == "gpt-2"  # train_bpe splits words with GPT-2's rules
    assert field(reader, "tokenizer.ggml.bos_token_id") == tok.bos_id
    assert field(reader, "tokenizer.ggml.eos_token_id") == tok.eos_id
    assert field(reader, "tokenizer.chat_template") == CHATML


def test_llama_gguf_loads_back_with_the_same_logits_and_tokens(checkpoints, tmp_path):
    """lmlab's GGUF reader (checked against transformers' GGUF loading) gets the model and tokenizer back."""
    original = load_model(str(checkpoints["llama"]))
    again = load_model(str(export_model(str(checkpoints["llama"]), tmp_path / "out", "gguf", "f32")))
    text = "#Person1#: Hello, how are you today?\n#Person2#: Fine, thanks."
    ids = original.tokenizer.encode(text)
    assert again.tokenizer.encode(text) == ids
    x = torch.tensor([ids])
    torch.testing.assert_close(again.model(x).logits, original.model(x).logits, rtol=0, atol=1e-5)


def test_ollama_modelfile_and_card(checkpoints, tmp_path):
    path = export_model(str(checkpoints["llama"]), tmp_path / "tiny-chat", "gguf", "f16")
    modelfile = (tmp_path / "tiny-chat" / "Modelfile").read_text()
    assert modelfile.splitlines()[0] == f"FROM ./{path.name}"
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "{{ .Prompt }}" in modelfile
    assert (tmp_path / "tiny-chat" / "README.md").read_text().startswith("---\n")


def run_cli(*argv: str) -> int:
    return main(list(argv))


@pytest.mark.parametrize(("preset", "words"), [
    ("tiny-bert", "encoder (BERT-style)"), ("tiny-t5", "encoder-decoder (T5-style)"),
])
def test_refuses_architectures_gguf_cannot_hold(tmp_path, capsys, preset, words):
    assert run_cli("export", preset, "--out", str(tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_refuses_a_decoder_layout_llama_cpp_has_no_graph_for(tmp_path):
    config = CONFIGS["llama"].replace(norm="layernorm")
    save_checkpoint(Transformer(config).init_weights(seed=0), tmp_path / "m", tiny_tokenizer(tmp_path / "tok"))
    with pytest.raises(LmlabError, match="llama architecture needs norm='rmsnorm'"):
        export_model(str(tmp_path / "m"), tmp_path / "out", "gguf", "f16")
    assert not (tmp_path / "out").exists()


def test_refuses_an_outtype_the_rows_do_not_fit(tmp_path, capsys):
    config = get_preset("tiny-llama")  # d_ff 172: not a multiple of 32
    save_checkpoint(Transformer(config).init_weights(seed=0), tmp_path / "m", tiny_tokenizer(tmp_path / "tok"))
    assert run_cli("export", str(tmp_path / "m"), "--outtype", "q4_0", "--out", str(tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert "blk.0.ffn_down.weight has rows of 172" in err and "blocks of 32" in err
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["m", "tok_corpus.txt"]


def test_an_existing_out_is_kept_unless_overwrite(checkpoints, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for overwrite in ([], ["--overwrite"]):  # a folder lmlab did not write is never replaced
        assert run_cli("export", str(checkpoints["gpt2"]), "--outtype", "f32", "--out", str(out), *overwrite) == 1
        assert "was not written by lmlab" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    out = tmp_path / "exported"
    assert run_cli("export", str(checkpoints["gpt2"]), "--outtype", "f32", "--out", str(out)) == 0
    assert run_cli("export", str(checkpoints["gpt2"]), "--outtype", "f32", "--out", str(out)) == 1
    assert "already holds an lmlab gguf-model" in capsys.readouterr().err
    assert run_cli("export", str(checkpoints["gpt2"]), "--outtype", "f32", "--out", str(out), "--overwrite") == 0
    assert sorted(p.name for p in out.iterdir()) == [".lmlab.json", "Modelfile", "README.md", "exported.F32.gguf",
                                                     "model_card.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_a_hugging_face_folder_refuses_gguf_types(checkpoints, tmp_path):
    with pytest.raises(LmlabError, match="q8_0 and q4_0 are GGUF types"):
        export_model(str(checkpoints["llama"]), tmp_path / "hf", "hf", "q8_0")
    assert not (tmp_path / "hf").exists()
