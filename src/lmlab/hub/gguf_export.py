"""Write lmlab decoders as GGUF files, the format llama.cpp and Ollama run.

A GGUF file (llama.cpp's `docs/gguf.md`) is one header of typed key/value
metadata (architecture hyper-parameters under `<arch>.*`, the tokenizer under
`tokenizer.ggml.*`, the chat template) followed by aligned tensors, each in its
own type. The `gguf` package's `GGUFWriter` writes it; this module decides
what goes in, the way llama.cpp's `convert_hf_to_gguf.py` does:

- Llama-style models (rotary positions, RMSNorm, SwiGLU) become `llama`; the q
  and k projections are permuted from the half-split rotary layout lmlab uses to
  the interleaved pairs llama.cpp rotates. A tied output head is left out
  (llama.cpp reuses `token_embd`).
- GPT-2-style models (learned positions, LayerNorm, tanh GELU, biases) become
  `gpt2`, with q, k, v fused into `attn_qkv` and `output` always written.
- Matrices take the requested type; vectors (norms, biases) and GPT-2's position
  table stay f32, as llama.cpp's converter keeps them. Q8_0 and Q4_0 quantize
  blocks of 32 weights along a row, each with one f16 scale (Q8_0: x ≈ d·q with
  q in [-127, 127]; Q4_0: x ≈ d·(q - 8) with q in [0, 15]).
- The tokenizer goes in as llama.cpp's byte-level BPE (`tokenizer.ggml.model`
  "gpt2"): tokens in id order, their types, the merges, the pre-tokenizer name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import gguf
import torch

from lmlab.config import ModelConfig
from lmlab.errors import LmlabError
from lmlab.models import Transformer
from lmlab.tokenizers import GGUF_PRE_SPLITS, GGUF_ROLE_KEYS, Tokenizer

OutType = Literal["f32", "f16", "bf16", "q8_0", "q4_0"]
OUTTYPES: dict[str, gguf.GGMLQuantizationType] = {
    "f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
    "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0,
    "q4_0": gguf.GGMLQuantizationType.Q4_0,
}
FILE_TYPES: dict[str, gguf.LlamaFileType] = {
    "f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
}
_LLAMA_LAYER = {"attn_norm": "attn_norm", "attn_q": "attn.q_proj", "attn_k": "attn.k_proj",
                "attn_v": "attn.v_proj", "attn_output": "attn.o_proj", "ffn_norm": "ffn_norm",
                "ffn_gate": "ffn.gate", "ffn_up": "ffn.up", "ffn_down": "ffn.down"}
_GPT2_LAYER = {"attn_norm": "attn_norm", "attn_output": "attn.o_proj", "ffn_norm": "ffn_norm", "ffn_up": "ffn.up",
               "ffn_down": "ffn.down"}
_KEEP_F32 = ("position_embd.weight",)  # llama.cpp's converter keeps the position table in f32


def gguf_architecture(config: ModelConfig) -> str:
    """The llama.cpp architecture an lmlab config maps to ("llama" or "gpt2"), or an error saying why none does."""
    if config.arch != "decoder":
        kind = {"encoder": "an encoder (BERT-style)", "encoder-decoder": "an encoder-decoder (T5-style)"}[config.arch]
        raise LmlabError(f"GGUF export writes decoder-only models (Llama- or GPT-2-style); this model is {kind}")
    if config.head != "lm":
        raise LmlabError(f"GGUF export needs a language-modelling head; this model has a {config.head!r} head")
    common = {"norm_position": ("pre", config.norm_position), "embedding_norm": (False, config.embedding_norm),
              "scale_embeddings": (False, config.scale_embeddings), "scale_attention": (True, config.scale_attention),
              "rescale_tied_output": (False, config.rescale_tied_output)}
    if config.pos_encoding == "rotary":
        arch, wanted = "llama", {"norm": ("rmsnorm", config.norm), "activation": ("swiglu", config.activation),
                                 "bias": (False, config.bias)}
    elif config.pos_encoding == "learned":
        arch, wanted = "gpt2", {"norm": ("layernorm", config.norm), "activation": ("gelu_tanh", config.activation),
                                "bias": (True, config.bias), "n_kv_head": (config.n_head, config.n_kv_head),
                                "d_head": (config.d_model // config.n_head, config.d_head)}
    else:
        raise LmlabError(f"GGUF export maps rotary positions to llama.cpp's llama and learned positions to its gpt2; "
                         f"this model uses {config.pos_encoding!r} positions")
    for name, (need, have) in {**wanted, **common}.items():
        if need != have:
            raise LmlabError(f"llama.cpp's {arch} architecture needs {name}={need!r}; this model has {name}={have!r}")
    return arch


def _interleave_rotary(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Half-split rotary rows (x_0..x_{d/2-1}, x_{d/2}..) to llama.cpp's adjacent pairs, head by head."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def gguf_tensors(model: Transformer) -> dict[str, torch.Tensor]:
    """The model's weights under GGUF's names and layout (float32), in the order the file stores them."""
    config, state = model.config, model.state_dict()
    arch = gguf_architecture(config)

    def get(name: str) -> torch.Tensor:
        return state[name].detach().float()

    out = {"token_embd.weight": get("tok_emb.weight")}
    if arch == "gpt2":
        out["position_embd.weight"] = get("decoder.learned_pos.weight")
    for i in range(config.n_layer):
        ours = f"decoder.layers.{i}."
        if arch == "llama":
            for theirs, name in _LLAMA_LAYER.items():
                weight = get(f"{ours}{name}.weight")
                if theirs in ("attn_q", "attn_k"):
                    weight = _interleave_rotary(weight, config.n_head if theirs == "attn_q" else config.n_kv_head)
                out[f"blk.{i}.{theirs}.weight"] = weight
            continue
        for part in ("weight", "bias"):
            out[f"blk.{i}.attn_qkv.{part}"] = torch.cat([get(f"{ours}attn.{x}_proj.{part}") for x in "qkv"])
            for theirs, name in _GPT2_LAYER.items():
                out[f"blk.{i}.{theirs}.{part}"] = get(f"{ours}{name}.{part}")
    out["output_norm.weight"] = get("decoder.final_norm.weight")
    if arch == "gpt2":
        out["output_norm.bias"] = get("decoder.final_norm.bias")
    if arch == "gpt2" or not config.tie_embeddings:
        out["output.weight"] = get("head.proj.weight" if not config.tie_embeddings else "tok_emb.weight")
    return out


def tensor_type(name: str, values: torch.Tensor, outtype: str) -> gguf.GGMLQuantizationType:
    """The type a tensor is stored in: the requested one for matrices, f32 for vectors and the position table."""
    if values.ndim < 2 or name in _KEEP_F32:
        return gguf.GGMLQuantizationType.F32
    qtype = OUTTYPES[outtype]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if values.shape[-1] % block:
        raise LmlabError(f"{outtype} stores rows in blocks of {block} weights, but {name} has rows of "
                         f"{values.shape[-1]}; choose f32, f16 or bf16 for this model")
    return qtype


@dataclass(frozen=True)
class GgufTokenizer:
    """A tokenizer as llama.cpp's metadata spells it."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    special_ids: dict[str, int]
    add_bos: bool
    add_eos: bool
    chat_template: str | None


def _pre_tokenizer_name(spec: dict | None) -> str:
    """llama.cpp's name (`tokenizer.ggml.pre`) for the word-splitting rules of a byte-level BPE tokenizer."""
    steps = (spec or {}).get("pretokenizers", [spec] if spec else [])
    splits = [s["pattern"]["Regex"] for s in steps if s.get("type") == "Split" and "Regex" in s.get("pattern", {})]
    if any(s.get("type") == "ByteLevel" and s.get("use_regex", True) for s in steps):
        splits.append(GGUF_PRE_SPLITS["gpt-2"][0])
    for name, known in GGUF_PRE_SPLITS.items():
        if splits == known:
            return name
    raise LmlabError("the tokenizer splits words with rules llama.cpp does not name (tokenizer.ggml.pre); "
                     "GGUF export knows: " + ", ".join(sorted(GGUF_PRE_SPLITS)))


def gguf_tokenizer(tokenizer: Tokenizer, vocab_size: int) -> GgufTokenizer:
    """The tokenizer's vocabulary, merges and special tokens in llama.cpp's byte-level BPE form.

    Rows of the embedding beyond the tokenizer's vocabulary get unused `[PAD<id>]` tokens, as
    llama.cpp's converter writes them, so that token count and embedding rows agree.
    """
    if not isinstance(tokenizer, Tokenizer):
        raise LmlabError(f"GGUF export needs a byte-level BPE tokenizer; this model has a {type(tokenizer).__name__}")
    if tokenizer.kind != "byte-level BPE":
        raise LmlabError(f"GGUF export writes byte-level BPE tokenizers (GPT-2, SmolLM2); this model's is "
                         f"{tokenizer.kind}")
    spec = json.loads(tokenizer.backend.to_str())
    if tokenizer.vocab_size > vocab_size:
        raise LmlabError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {vocab_size} embeddings")
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        token = tokenizer.id_to_token(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL if i not in added else
                         gguf.TokenType.CONTROL if added[i]["special"] else gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    roles = {role: getattr(tokenizer, f"{role}_id") for role in GGUF_ROLE_KEYS}
    probe = tokenizer.encode("a", add_special_tokens=True)
    plain = tokenizer.encode("a")
    return GgufTokenizer(
        tokens=tokens, token_types=[int(t) for t in types], merges=merges,
        pre=_pre_tokenizer_name(spec.get("pre_tokenizer")),
        special_ids={role: i for role, i in roles.items() if i is not None},
        add_bos=len(probe) > len(plain) and probe[0] == roles["bos"],
        add_eos=len(probe) > len(plain) and probe[-1] == roles["eos"],
        chat_template=tokenizer.chat_template,
    )


def _add_architecture(writer: gguf.GGUFWriter, config: ModelConfig, arch: str) -> None:
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.d_model)
    writer.add_block_count(config.n_layer)
    writer.add_feed_forward_length(config.d_ff)
    writer.add_head_count(config.n_head)
    if arch == "gpt2":
        writer.add_layer_norm_eps(config.norm_eps)
        return
    writer.add_head_count_kv(config.n_kv_head)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_rope_dimension_count(config.d_head)
    if config.d_head * config.n_head != config.d_model:
        writer.add_key_length(config.d_head)
        writer.add_value_length(config.d_head)


def _add_tokenizer(writer: gguf.GGUFWriter, tok: GgufTokenizer) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tok.pre)
    writer.add_token_list(tok.tokens)
    writer.add_token_types(tok.token_types)
    writer.add_token_merges(tok.merges)
    for role, token_id in tok.special_ids.items():
        writer.add_uint32(GGUF_ROLE_KEYS[role], token_id)
    writer.add_add_bos_token(tok.add_bos)
    writer.add_add_eos_token(tok.add_eos)
    if tok.chat_template:
        writer.add_chat_template(tok.chat_template)


def write_gguf(model: Transformer, tokenizer: Tokenizer, path: Path, outtype: OutType = "f16",
               name: str = "model", progress: bool = False) -> Path:
    """Write `model` and `tokenizer` to the GGUF file `path` (the caller makes it atomic)."""
    if outtype not in OUTTYPES:
        raise LmlabError(f"unknown GGUF type {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    config = model.config
    arch = gguf_architecture(config)
    tensors = gguf_tensors(model)
    types = {n: tensor_type(n, t, outtype) for n, t in tensors.items()}  # refuses before anything is written
    tok = gguf_tokenizer(tokenizer, config.vocab_size)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_file_type(FILE_TYPES[outtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_architecture(writer, config, arch)
    _add_tokenizer(writer, tok)
    for tensor_name, values in tensors.items():
        data = gguf.quants.quantize(values.numpy(), types[tensor_name])
        writer.add_tensor(tensor_name, data, raw_dtype=types[tensor_name])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=progress)
    writer.close()
    return Path(path)


__all__ = ["FILE_TYPES", "OUTTYPES", "GgufTokenizer", "OutType", "gguf_architecture", "gguf_tensors",
           "gguf_tokenizer", "tensor_type", "write_gguf"]
