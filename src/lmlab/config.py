"""ModelConfig: one dataclass that describes every model lmlab builds, and named presets.

The three transformer families (Vaswani et al. 2017, "Attention Is All You Need")
differ only in which stacks they have and which way attention may look:

- ``encoder`` (BERT): bidirectional self-attention, one stack.
- ``decoder`` (GPT, Llama): causal self-attention, one stack.
- ``encoder-decoder`` (the original Transformer, T5): an encoder stack, and a
  causal decoder stack that also cross-attends to the encoder's output.

Everything else (positions, norms, activations, biases, head) is a field.
Presets are plain data, each citing where its numbers come from, in the manner
of litgpt's ``config.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError, did_you_mean
from lmlab.io import write_json

ARCHS = ("encoder", "decoder", "encoder-decoder")
POS_ENCODINGS = ("sinusoidal", "learned", "rotary", "relative", "none")
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu", "swiglu", "geglu")
HEADS = ("lm", "mlm", "sequence-classification", "token-classification", "question-answering", "none")


@dataclass
class ModelConfig:
    """Every hyper-parameter of an lmlab transformer.

    Names follow the papers and nanoGPT/litgpt: ``d_model`` is the width of the
    residual stream, ``n_head`` the number of query heads, ``n_kv_head`` the
    number of key/value heads (grouped-query attention, Ainslie et al. 2023;
    ``n_kv_head == n_head`` is ordinary multi-head attention, 1 is multi-query),
    ``d_ff`` the hidden width of the feed-forward block.
    """

    arch: str = "decoder"
    vocab_size: int = 256
    d_model: int = 64
    n_layer: int = 2
    n_head: int = 4
    d_ff: int = 256
    max_seq_len: int = 128
    n_kv_head: int | None = None
    d_head: int | None = None
    n_decoder_layer: int | None = None
    pos_encoding: str = "learned"
    rope_theta: float = 10000.0
    relative_num_buckets: int = 32
    relative_max_distance: int = 128
    norm: str = "layernorm"
    norm_position: str = "pre"
    norm_eps: float = 1e-5
    embedding_norm: bool = False
    scale_embeddings: bool = False
    activation: str = "gelu"
    bias: bool = True
    tie_embeddings: bool = True
    rescale_tied_output: bool = False  # T5 v1.0: scale decoder output by d_model**-0.5 before the LM head
    scale_attention: bool = True
    type_vocab_size: int = 0
    dropout: float = 0.0
    head: str = "lm"
    num_labels: int = 2
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    decoder_start_token_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_types()
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.d_head is None and self.n_head > 0:
            self.d_head = self.d_model // self.n_head
        if self.n_decoder_layer is None:
            self.n_decoder_layer = self.n_layer if self.arch == "encoder-decoder" else 0

    def _check_types(self) -> None:
        """Each field holds a value of its declared type (a config read from JSON or `--set` may not)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = f.type.removesuffix(" | None")
            if value is None and f.type.endswith("| None"):
                continue
            if kind == "int":
                ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            elif kind == "float":
                ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            else:
                ok = isinstance(value, {"str": str, "bool": bool}.get(kind, dict))
            if not ok:
                expected = {"int": "an integer", "float": "a finite number", "str": "a text",
                            "bool": "true or false"}.get(kind, "a JSON object")
                raise LmlabError(f"model config field {f.name} must be {expected}, not {value!r}")

    @property
    def gated(self) -> bool:
        """True for gated linear units in the feed-forward block (Shazeer 2020, GLU variants)."""
        return self.activation in ("swiglu", "geglu")

    @property
    def has_encoder(self) -> bool:
        return self.arch in ("encoder", "encoder-decoder")

    @property
    def has_decoder(self) -> bool:
        return self.arch in ("decoder", "encoder-decoder")

    def validate(self) -> ModelConfig:
        """Check the fields make a buildable model; raise LmlabError naming the first bad one."""
        choices = {
            "arch": ARCHS,
            "pos_encoding": POS_ENCODINGS,
            "norm": NORMS,
            "norm_position": NORM_POSITIONS,
            "activation": ACTIVATIONS,
            "head": HEADS,
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise LmlabError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        for name in ("vocab_size", "d_model", "n_layer", "n_head", "d_ff", "max_seq_len", "n_kv_head", "d_head"):
            if getattr(self, name) < 1:
                raise LmlabError(f"{name} must be a positive integer, not {getattr(self, name)}")
        if self.n_head % self.n_kv_head:
            raise LmlabError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if self.pos_encoding == "rotary" and self.d_head % 2:
            raise LmlabError(f"rotary positions need an even d_head, not {self.d_head}")
        if self.arch == "encoder-decoder" and self.head not in ("lm", "none"):
            raise LmlabError(f"an encoder-decoder model takes the 'lm' head, not {self.head!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise LmlabError(f"dropout must be in [0, 1), not {self.dropout}")
        if self.norm_eps < 0 or self.rope_theta <= 0:
            raise LmlabError(f"norm_eps must be at least 0 and rope_theta positive, not {self.norm_eps} and "
                             f"{self.rope_theta}")
        for name in ("relative_num_buckets", "relative_max_distance", "num_labels"):
            if getattr(self, name) < 1:
                raise LmlabError(f"{name} must be a positive integer, not {getattr(self, name)}")
        if self.type_vocab_size < 0 or (self.n_decoder_layer or 0) < 0:
            raise LmlabError("type_vocab_size and n_decoder_layer cannot be negative")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict):
            raise LmlabError(f"a model config is a JSON object of fields, not {type(data).__name__}")
        unknown = sorted(set(data) - known)
        if unknown:
            raise LmlabError(f"unknown model config field(s): {', '.join(unknown)}")
        return cls(**data).validate()

    def replace(self, **changes: Any) -> ModelConfig:
        """A validated copy with some fields changed."""
        return ModelConfig.from_dict({**self.to_dict(), **changes})

    def save(self, path: Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> ModelConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except json.JSONDecodeError as err:
            raise LmlabError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


@dataclass(frozen=True)
class Preset:
    """A named configuration and the source its numbers come from."""

    name: str
    config: ModelConfig
    source: str
    description: str = ""


def _bert(**kw: Any) -> ModelConfig:
    base = dict(
        arch="encoder", vocab_size=30522, max_seq_len=512, pos_encoding="learned", norm="layernorm",
        norm_position="post", norm_eps=1e-12, embedding_norm=True, activation="gelu", bias=True,
        tie_embeddings=True, type_vocab_size=2, head="mlm", pad_token_id=0,
    )
    base.update(kw)
    return ModelConfig(**base)


def _gpt(**kw: Any) -> ModelConfig:
    base = dict(
        arch="decoder", vocab_size=50257, pos_encoding="learned", norm="layernorm", norm_position="pre",
        norm_eps=1e-5, activation="gelu_tanh", bias=True, tie_embeddings=True, head="lm",
        bos_token_id=50256, eos_token_id=50256,
    )
    base.update(kw)
    return ModelConfig(**base)


def _llama(**kw: Any) -> ModelConfig:
    base = dict(
        arch="decoder", pos_encoding="rotary", norm="rmsnorm", norm_position="pre", activation="swiglu",
        bias=False, head="lm",
    )
    base.update(kw)
    return ModelConfig(**base)


def _t5(**kw: Any) -> ModelConfig:
    base = dict(
        arch="encoder-decoder", vocab_size=32128, max_seq_len=512, pos_encoding="relative",
        relative_num_buckets=32, relative_max_distance=128, norm="rmsnorm", norm_position="pre",
        norm_eps=1e-6, activation="relu", bias=False, tie_embeddings=True, rescale_tied_output=True,
        scale_attention=False, head="lm", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    base.update(kw)
    return ModelConfig(**base)


def _transformer(**kw: Any) -> ModelConfig:
    base = dict(
        arch="encoder-decoder", pos_encoding="sinusoidal", norm="layernorm", norm_position="post",
        norm_eps=1e-6, activation="relu", bias=True, tie_embeddings=True, scale_embeddings=True, head="lm",
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
    )
    base.update(kw)
    return ModelConfig(**base)


_PRESETS = [
    Preset("transformer-base", _transformer(vocab_size=37000, d_model=512, n_layer=6, n_head=8, d_ff=2048,
                                            max_seq_len=512),
           "Vaswani et al. 2017, 'Attention Is All You Need', Table 3 (base): N=6, d_model=512, d_ff=2048, "
           "h=8; shared 37000-token BPE vocabulary, embeddings tied with the pre-softmax projection",
           "the original encoder-decoder Transformer"),
    Preset("transformer-big", _transformer(vocab_size=37000, d_model=1024, n_layer=6, n_head=16, d_ff=4096,
                                           max_seq_len=512, dropout=0.3),
           "Vaswani et al. 2017, Table 3 (big): N=6, d_model=1024, d_ff=4096, h=16, P_drop=0.3; 213M",
           "the original encoder-decoder Transformer, big"),
    Preset("bert-base", _bert(d_model=768, n_layer=12, n_head=12, d_ff=3072),
           "Devlin et al. 2018, BERT, section 3: L=12, H=768, A=12, 110M; google-bert/bert-base-uncased config.json",
           "encoder-only masked language model"),
    Preset("bert-large", _bert(d_model=1024, n_layer=24, n_head=16, d_ff=4096),
           "Devlin et al. 2018, BERT, section 3: L=24, H=1024, A=16, 340M",
           "encoder-only masked language model"),
    Preset("gpt2", _gpt(d_model=768, n_layer=12, n_head=12, d_ff=3072, max_seq_len=1024),
           "Radford et al. 2019, GPT-2 (small, 124M); openai-community/gpt2 config.json",
           "decoder-only causal language model"),
    Preset("gpt3-175b", _gpt(d_model=12288, n_layer=96, n_head=96, d_ff=4 * 12288, max_seq_len=2048),
           "Brown et al. 2020, 'Language Models are Few-Shot Learners', Table 2.1: n_layers=96, d_model=12288, "
           "n_heads=96, d_head=128, n_ctx=2048",
           "decoder-only causal language model"),
    Preset("smollm2-135m", _llama(vocab_size=49152, d_model=576, n_layer=30, n_head=9, n_kv_head=3, d_ff=1536,
                                  max_seq_len=8192, rope_theta=100000.0, norm_eps=1e-5, tie_embeddings=True,
                                  bos_token_id=1, eos_token_id=2, pad_token_id=2),
           "Allal et al. 2025, SmolLM2; HuggingFaceTB/SmolLM2-135M config.json (Llama architecture)",
           "decoder-only Llama-style model with grouped-query attention"),
    Preset("t5-small", _t5(d_model=512, n_layer=6, n_head=8, d_head=64, d_ff=2048),
           "Raffel et al. 2020, T5; google-t5/t5-small config.json (60M)",
           "encoder-decoder text-to-text model"),
    Preset("flan-t5-base", _t5(d_model=768, n_layer=12, n_head=12, d_head=64, d_ff=2048, activation="geglu",
                               tie_embeddings=False, rescale_tied_output=False),
           "Chung et al. 2022, Flan-T5; google/flan-t5-base config.json (T5 v1.1: gated-GELU, untied head, 248M)",
           "instruction-tuned encoder-decoder model"),
    Preset("minilm-l6", _bert(d_model=384, n_layer=6, n_head=12, d_ff=1536, head="none"),
           "Wang et al. 2020, MiniLM; sentence-transformers/all-MiniLM-L6-v2 config.json (22.7M)",
           "small BERT encoder for sentence embeddings"),
    Preset("tiny-transformer", _transformer(vocab_size=512, d_model=64, n_layer=2, n_head=4, d_ff=256,
                                            max_seq_len=128),
           "a scaled-down transformer-base for tests and CPU experiments", "tiny encoder-decoder"),
    Preset("tiny-bert", _bert(vocab_size=512, d_model=64, n_layer=2, n_head=4, d_ff=256, max_seq_len=128),
           "a scaled-down bert-base for tests and CPU experiments", "tiny encoder"),
    Preset("tiny-gpt2", _gpt(vocab_size=512, d_model=64, n_layer=2, n_head=4, d_ff=256, max_seq_len=128,
                             bos_token_id=0, eos_token_id=0),
           "a scaled-down gpt2 for tests and CPU experiments", "tiny decoder (GPT-2 style)"),
    Preset("tiny-llama", _llama(vocab_size=512, d_model=64, n_layer=2, n_head=4, n_kv_head=2, d_ff=172,
                                max_seq_len=256, norm_eps=1e-5, tie_embeddings=True, bos_token_id=1,
                                eos_token_id=2, pad_token_id=2),
           "a scaled-down smollm2-135m for tests and CPU experiments", "tiny decoder (Llama style, GQA)"),
    Preset("tiny-t5", _t5(vocab_size=512, d_model=64, n_layer=2, n_head=4, d_head=16, d_ff=128,
                          relative_num_buckets=8, relative_max_distance=32, max_seq_len=256),
           "a scaled-down t5-small for tests and CPU experiments", "tiny encoder-decoder (T5 style)"),
]

PRESETS: dict[str, Preset] = {p.name: p for p in _PRESETS}


def get_preset(name: str) -> ModelConfig:
    """The config of a named preset (a fresh copy), or LmlabError with close names."""
    if name not in PRESETS:
        raise LmlabError(f"unknown preset {name!r}{did_you_mean(name, PRESETS)}")
    return ModelConfig.from_dict(PRESETS[name].config.to_dict())
