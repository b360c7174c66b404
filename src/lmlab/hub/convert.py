"""Translate Hugging Face checkpoints (config.json + weights) to lmlab and back.

Four families cover the course: Llama (and Mistral/Qwen-style decoders that share
its layout), GPT-2, BERT and T5. For each there is a config translation and a
table of weight names; GPT-2 also stores its linear layers transposed (its
"Conv1D") and fuses q, k and v into one matrix, which we split.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lmlab.config import ModelConfig
from lmlab.errors import LmlabError

FAMILIES = ("llama", "gpt2", "bert", "t5")
_HF_MODEL_TYPES = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "gpt2": "gpt2", "bert": "bert",
                   "t5": "t5"}

_HF_HEADS = {
    "llama": {"lm": "LlamaForCausalLM", "sequence-classification": "LlamaForSequenceClassification",
              "none": "LlamaModel"},
    "gpt2": {"lm": "GPT2LMHeadModel", "sequence-classification": "GPT2ForSequenceClassification",
             "none": "GPT2Model"},
    "bert": {"mlm": "BertForMaskedLM", "sequence-classification": "BertForSequenceClassification",
             "token-classification": "BertForTokenClassification",
             "question-answering": "BertForQuestionAnswering", "none": "BertModel"},
    "t5": {"lm": "T5ForConditionalGeneration"},
}


def family_of(hf_config: dict[str, Any]) -> str:
    model_type = hf_config.get("model_type", "")
    if model_type not in _HF_MODEL_TYPES:
        raise LmlabError(f"model type {model_type!r} is not supported (lmlab converts: llama, gpt2, bert, t5)")
    return _HF_MODEL_TYPES[model_type]


def _head_from_architectures(hf_config: dict[str, Any], family: str) -> str:
    names = hf_config.get("architectures") or []
    for head, cls in _HF_HEADS[family].items():
        if cls in names:
            return head
    return {"llama": "lm", "gpt2": "lm", "bert": "none", "t5": "lm"}[family]


def config_from_hf(hf: dict[str, Any], head: str | None = None) -> ModelConfig:
    """An lmlab ModelConfig equivalent to a transformers config.json; LmlabError for a field it lacks or cannot
    read."""
    if not isinstance(hf, dict):
        raise LmlabError(f"a Hugging Face config is a JSON object, not {type(hf).__name__}")
    try:
        return _config_from_hf(hf, head)
    except KeyError as err:
        raise LmlabError(f"the Hugging Face config has no {err.args[0]!r} field") from None
    except (TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError) as err:
        raise LmlabError(f"the Hugging Face config has a field lmlab cannot read ({type(err).__name__}: {err})"
                         ) from None


def _config_from_hf(hf: dict[str, Any], head: str | None) -> ModelConfig:
    family = family_of(hf)
    head = head or _head_from_architectures(hf, family)
    num_labels = len(hf.get("id2label") or {}) or hf.get("num_labels", 2)
    named = {str(k): v for k, v in (hf.get("id2label") or {}).items()}
    extra = {"id2label": named} if head in ("sequence-classification", "token-classification") and named else {}
    ids = {k: hf.get(k) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
    ids = {k: (v[0] if isinstance(v, list) else v) for k, v in ids.items()}
    if family == "llama":
        rope = hf.get("rope_parameters") or {}
        n_head = hf["num_attention_heads"]
        return ModelConfig(
            arch="decoder", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layer=hf["num_hidden_layers"],
            n_head=n_head, n_kv_head=hf.get("num_key_value_heads") or n_head,
            d_head=hf.get("head_dim") or hf["hidden_size"] // n_head, d_ff=hf["intermediate_size"],
            max_seq_len=hf.get("max_position_embeddings", 2048), pos_encoding="rotary",
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))), norm="rmsnorm",
            norm_eps=hf.get("rms_norm_eps", 1e-6), activation="swiglu", bias=bool(hf.get("attention_bias", False)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)), head=head, num_labels=num_labels, extra=extra,
            **ids,
        ).validate()
    if family == "gpt2":
        d = hf["n_embd"]
        act = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
        return ModelConfig(
            arch="decoder", vocab_size=hf["vocab_size"], d_model=d, n_layer=hf["n_layer"], n_head=hf["n_head"],
            d_ff=hf.get("n_inner") or 4 * d, max_seq_len=hf["n_positions"], pos_encoding="learned",
            norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            activation=act.get(hf.get("activation_function", "gelu_new"), "gelu_tanh"), bias=True,
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)), head=head, num_labels=num_labels, extra=extra,
            **ids,
        ).validate()
    if family == "bert":
        return ModelConfig(
            arch="encoder", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
            n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], d_ff=hf["intermediate_size"],
            max_seq_len=hf.get("max_position_embeddings", 512), pos_encoding="learned", norm="layernorm",
            norm_position="post", norm_eps=hf.get("layer_norm_eps", 1e-12), embedding_norm=True,
            activation={"gelu": "gelu", "relu": "relu", "gelu_new": "gelu_tanh"}.get(hf.get("hidden_act"), "gelu"),
            bias=True, tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
            type_vocab_size=hf.get("type_vocab_size", 2), head=head, num_labels=num_labels, extra=extra, **ids,
        ).validate()
    gated = hf.get("feed_forward_proj", "relu").startswith("gated")
    act = hf.get("feed_forward_proj", "relu").removeprefix("gated-")
    activation = ("geglu" if "gelu" in act else "swiglu") if gated else {"gelu": "gelu_tanh"}.get(act, act)
    tie = bool(hf.get("tie_word_embeddings", True))
    rescale = bool(hf.get("scale_decoder_outputs", tie))  # transformers 5 keeps T5's rescaling flag apart
    return ModelConfig(
        arch="encoder-decoder", vocab_size=hf["vocab_size"], d_model=hf["d_model"], n_layer=hf["num_layers"],
        n_decoder_layer=hf.get("num_decoder_layers") or hf["num_layers"], n_head=hf["num_heads"],
        d_head=hf["d_kv"], d_ff=hf["d_ff"], max_seq_len=hf.get("n_positions", 512), pos_encoding="relative",
        relative_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128), norm="rmsnorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-6), activation=activation, bias=False, tie_embeddings=tie,
        rescale_tied_output=rescale, scale_attention=False, head="lm",
        decoder_start_token_id=hf.get("decoder_start_token_id", 0), **ids,
    ).validate()


def _decoder_head_names(c: ModelConfig) -> list[tuple[str, str]]:
    """The head of a transformers decoder (Llama, GPT-2): an untied lm_head, or a sequence classifier's score."""
    if c.head == "lm" and not c.tie_embeddings:
        return [("lm_head.weight", "head.proj.weight")]
    if c.head == "sequence-classification":
        return [("score.weight", "head.classifier.weight")]
    return []


def _llama_names(c: ModelConfig) -> list[tuple[str, str]]:
    names = [("model.embed_tokens.weight", "tok_emb.weight"), ("model.norm.weight", "decoder.final_norm.weight")]
    layer = {
        "self_attn.q_proj": "attn.q_proj", "self_attn.k_proj": "attn.k_proj", "self_attn.v_proj": "attn.v_proj",
        "self_attn.o_proj": "attn.o_proj", "mlp.gate_proj": "ffn.gate", "mlp.up_proj": "ffn.up",
        "mlp.down_proj": "ffn.down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    }
    params = ["weight", "bias"] if c.bias else ["weight"]
    for i in range(c.n_layer):
        for hf, ours in layer.items():
            kinds = ["weight"] if "norm" in hf or hf.startswith("mlp") else params
            names += [(f"model.layers.{i}.{hf}.{p}", f"decoder.layers.{i}.{ours}.{p}") for p in kinds]
    return names + _decoder_head_names(c)


def _gpt2_names(c: ModelConfig) -> list[tuple[str, str]]:
    names = [("transformer.wte.weight", "tok_emb.weight"), ("transformer.wpe.weight", "decoder.learned_pos.weight")]
    names += [(f"transformer.ln_f.{p}", f"decoder.final_norm.{p}") for p in ("weight", "bias")]
    layer = {"ln_1": "attn_norm", "ln_2": "ffn_norm", "attn.c_proj": "attn.o_proj", "mlp.c_fc": "ffn.up",
             "mlp.c_proj": "ffn.down"}
    for i in range(c.n_layer):
        for hf, ours in layer.items():
            names += [(f"transformer.h.{i}.{hf}.{p}", f"decoder.layers.{i}.{ours}.{p}") for p in ("weight", "bias")]
        split_qkv = [f"decoder.layers.{i}.attn.{x}_proj.{p}" for x in "qkv" for p in ("weight", "bias")]
        names += [(name, name) for name in split_qkv]
    return names + _decoder_head_names(c)


def _bert_names(c: ModelConfig) -> list[tuple[str, str]]:
    wb = ("weight", "bias")
    names = [("bert.embeddings.word_embeddings.weight", "tok_emb.weight"),
             ("bert.embeddings.position_embeddings.weight", "encoder.learned_pos.weight"),
             ("bert.embeddings.token_type_embeddings.weight", "encoder.type_emb.weight")]
    names += [(f"bert.embeddings.LayerNorm.{p}", f"encoder.emb_norm.{p}") for p in wb]
    layer = {"attention.self.query": "attn.q_proj", "attention.self.key": "attn.k_proj",
             "attention.self.value": "attn.v_proj", "attention.output.dense": "attn.o_proj",
             "attention.output.LayerNorm": "attn_norm", "intermediate.dense": "ffn.up",
             "output.dense": "ffn.down", "output.LayerNorm": "ffn_norm"}
    for i in range(c.n_layer):
        for hf, ours in layer.items():
            names += [(f"bert.encoder.layer.{i}.{hf}.{p}", f"encoder.layers.{i}.{ours}.{p}") for p in wb]
    heads = {
        "mlm": {"cls.predictions.transform.dense": "head.dense", "cls.predictions.transform.LayerNorm": "head.norm"},
        "sequence-classification": {"bert.pooler.dense": "head.pooler", "classifier": "head.classifier"},
        "token-classification": {"classifier": "head.classifier"},
        "question-answering": {"qa_outputs": "head.span"},
    }.get(c.head, {})
    for hf, ours in heads.items():
        names += [(f"{hf}.{p}", f"{ours}.{p}") for p in wb]
    if c.head == "mlm":
        names.append(("cls.predictions.bias", "head.proj.bias"))
        if not c.tie_embeddings:
            names.append(("cls.predictions.decoder.weight", "head.proj.weight"))
    return names


def _t5_names(c: ModelConfig) -> list[tuple[str, str]]:
    names = [("shared.weight", "tok_emb.weight"),
             ("encoder.final_layer_norm.weight", "encoder.final_norm.weight"),
             ("decoder.final_layer_norm.weight", "decoder.final_norm.weight"),
             ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "encoder.relative_bias.bias.weight"),
             ("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "decoder.relative_bias.bias.weight")]
    ffn = {"wi_0": "ffn.gate", "wi_1": "ffn.up", "wo": "ffn.down"} if c.gated else {"wi": "ffn.up", "wo": "ffn.down"}
    for stack, n_layer in (("encoder", c.n_layer), ("decoder", c.n_decoder_layer)):
        sublayers = [("SelfAttention", "attn", "attn_norm")]
        if stack == "decoder":
            sublayers.append(("EncDecAttention", "cross_attn", "cross_norm"))
        for i in range(n_layer):
            pre = f"{stack}.block.{i}.layer"
            for j, (hf, ours, norm) in enumerate(sublayers):
                names += [(f"{pre}.{j}.{hf}.{x}.weight", f"{stack}.layers.{i}.{ours}.{x}_proj.weight") for x in "qkvo"]
                names.append((f"{pre}.{j}.layer_norm.weight", f"{stack}.layers.{i}.{norm}.weight"))
            j = len(sublayers)
            names += [(f"{pre}.{j}.DenseReluDense.{hf}.weight", f"{stack}.layers.{i}.{ours}.weight")
                      for hf, ours in ffn.items()]
            names.append((f"{pre}.{j}.layer_norm.weight", f"{stack}.layers.{i}.ffn_norm.weight"))
    if not c.tie_embeddings:
        names.append(("lm_head.weight", "head.proj.weight"))
    return names


_NAME_TABLES: dict[str, Callable[[ModelConfig], list[tuple[str, str]]]] = {
    "llama": _llama_names, "gpt2": _gpt2_names, "bert": _bert_names, "t5": _t5_names,
}


def _normalize_prefix(state: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """Base-model checkpoints (LlamaModel, GPT2Model, BertModel) lack the wrapper's prefix; add it."""
    prefix = {"llama": "model.", "gpt2": "transformer.", "bert": "bert."}.get(family)
    if prefix is None or any(k.startswith(prefix) for k in state):
        return state
    heads = ("lm_head.", "cls.", "classifier.", "score.", "qa_outputs.")
    return {k if k.startswith(heads) else prefix + k: v for k, v in state.items()}


def _split_gpt2_qkv(state: dict[str, torch.Tensor], c: ModelConfig) -> dict[str, torch.Tensor]:
    """GPT-2 keeps q, k, v fused and its linear weights as [in, out]; give them our [out, in] layout."""
    out = dict(state)
    for i in range(c.n_layer):
        pre = f"transformer.h.{i}."
        weight, bias = out.pop(pre + "attn.c_attn.weight"), out.pop(pre + "attn.c_attn.bias")
        for name, w, b in zip("qkv", weight.t().chunk(3, dim=0), bias.chunk(3), strict=True):
            out[f"decoder.layers.{i}.attn.{name}_proj.weight"] = w.contiguous()
            out[f"decoder.layers.{i}.attn.{name}_proj.bias"] = b.contiguous()
        for conv in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            out[pre + conv + ".weight"] = out[pre + conv + ".weight"].t().contiguous()
    return out


def _fuse_gpt2_qkv(state: dict[str, torch.Tensor], c: ModelConfig) -> dict[str, torch.Tensor]:
    out = dict(state)
    for i in range(c.n_layer):
        pre = f"transformer.h.{i}."
        ours = [f"decoder.layers.{i}.attn.{x}_proj" for x in "qkv"]
        out[pre + "attn.c_attn.weight"] = torch.cat([out.pop(n + ".weight") for n in ours]).t().contiguous()
        out[pre + "attn.c_attn.bias"] = torch.cat([out.pop(n + ".bias") for n in ours])
        for conv in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            out[pre + conv + ".weight"] = out[pre + conv + ".weight"].t().contiguous()
    return out


def state_dict_from_hf(hf_state: dict[str, torch.Tensor], config: ModelConfig, family: str) -> dict[str, torch.Tensor]:
    """Rename (and for GPT-2 re-layout) a transformers state dict into lmlab's names."""
    state = _normalize_prefix(hf_state, family)
    if family == "gpt2":
        state = _split_gpt2_qkv(state, config)
    out = {}
    for hf_name, ours in _NAME_TABLES[family](config):
        if hf_name in state:
            out[ours] = state[hf_name]
        elif ours in state:
            out[ours] = state[ours]
        else:
            raise LmlabError(f"checkpoint is missing weight {hf_name!r} for a {family} model")
    return out


def state_dict_to_hf(state: dict[str, torch.Tensor], config: ModelConfig, family: str) -> dict[str, torch.Tensor]:
    """lmlab's state dict under transformers' names (tied weights written once, as transformers does)."""
    out = {hf_name: state[ours] for hf_name, ours in _NAME_TABLES[family](config)}
    return _fuse_gpt2_qkv(out, config) if family == "gpt2" else out


def hf_config_from_lmlab(config: ModelConfig, family: str) -> dict[str, Any]:
    """A transformers config.json dict for an lmlab config of a supported family."""
    c = config
    if c.head not in _HF_HEADS[family]:
        raise LmlabError(f"transformers has no {family} class for the {c.head!r} head")
    common = {"architectures": [_HF_HEADS[family][c.head]], "vocab_size": c.vocab_size,
              "pad_token_id": c.pad_token_id, "bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id,
              "tie_word_embeddings": c.tie_embeddings}
    if c.head in ("sequence-classification", "token-classification"):
        common["id2label"] = {str(i): f"LABEL_{i}" for i in range(c.num_labels)}
    labels = c.extra.get("id2label")
    if labels:
        names = [labels[str(i)] for i in range(len(labels))] if isinstance(labels, dict) else labels
        common["id2label"] = {str(i): name for i, name in enumerate(names)}
        common["label2id"] = {name: i for i, name in enumerate(names)}
    if family == "llama":
        return {**common, "model_type": "llama", "hidden_size": c.d_model, "num_hidden_layers": c.n_layer,
                "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head, "head_dim": c.d_head,
                "intermediate_size": c.d_ff, "max_position_embeddings": c.max_seq_len, "hidden_act": "silu",
                "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta,
                "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
                "attention_bias": c.bias, "mlp_bias": False}
    if family == "gpt2":
        act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}[c.activation]
        return {**common, "model_type": "gpt2", "n_embd": c.d_model, "n_layer": c.n_layer, "n_head": c.n_head,
                "n_inner": c.d_ff, "n_positions": c.max_seq_len, "layer_norm_epsilon": c.norm_eps,
                "activation_function": act}
    if family == "bert":
        return {**common, "model_type": "bert", "hidden_size": c.d_model, "num_hidden_layers": c.n_layer,
                "num_attention_heads": c.n_head, "intermediate_size": c.d_ff,
                "max_position_embeddings": c.max_seq_len, "type_vocab_size": c.type_vocab_size,
                "layer_norm_eps": c.norm_eps, "hidden_act": {"gelu_tanh": "gelu_new"}.get(c.activation, c.activation)}
    proj = {"relu": "relu", "gelu_tanh": "gelu_new", "geglu": "gated-gelu", "swiglu": "gated-silu"}[c.activation]
    return {**common, "model_type": "t5", "d_model": c.d_model, "d_kv": c.d_head, "d_ff": c.d_ff,
            "num_layers": c.n_layer, "num_decoder_layers": c.n_decoder_layer, "num_heads": c.n_head,
            "relative_attention_num_buckets": c.relative_num_buckets,
            "relative_attention_max_distance": c.relative_max_distance, "layer_norm_epsilon": c.norm_eps,
            "feed_forward_proj": proj, "decoder_start_token_id": c.decoder_start_token_id,
            "is_encoder_decoder": True}


def guess_family(config: ModelConfig) -> str:
    """Which transformers family an lmlab config corresponds to, for export."""
    if config.arch == "encoder-decoder" and config.pos_encoding == "relative":
        return "t5"
    if config.arch == "encoder" and config.pos_encoding == "learned" and config.norm_position == "post":
        return "bert"
    if config.arch == "decoder" and config.pos_encoding == "rotary" and config.activation == "swiglu":
        return "llama"
    if config.arch == "decoder" and config.pos_encoding == "learned" and config.norm == "layernorm":
        return "gpt2"
    raise LmlabError("this model has no transformers equivalent (export supports Llama, GPT-2, BERT and T5 layouts)")


__all__ = ["FAMILIES", "config_from_hf", "family_of", "guess_family", "hf_config_from_lmlab",
           "state_dict_from_hf", "state_dict_to_hf"]
