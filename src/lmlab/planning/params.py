"""Where a model's parameters are: a per-component table computed from the config alone.

For one layer of width d (= d_model), with h query heads and h_kv key/value
heads of width d_head, and feed-forward width d_ff:
    attention     d·(h·d_head) + 2·d·(h_kv·d_head) + (h·d_head)·d  (+ biases)
                  = 4·d² (+ 4·d) for ordinary multi-head attention
    feed-forward  2·d·d_ff (+ d_ff + d); gated units (SwiGLU, GeGLU) have a third matrix: 3·d·d_ff
    norms         d per RMSNorm, 2·d per LayerNorm (scale and shift)
plus the token embedding V·d, learned positions L·d, and the output head
(nothing extra when tied to the embedding). The counts are checked against
the instantiated model by `count_model_parameters`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from lmlab.config import ModelConfig

COMPONENTS = ("embeddings", "attention", "cross-attention", "feed-forward", "norms", "position bias", "head")


@dataclass(frozen=True)
class ParamRow:
    stack: str          # "model", "encoder" or "decoder"
    component: str      # one of COMPONENTS
    per_layer: int      # parameters in one layer (or the whole thing for non-layer rows)
    n_layers: int       # 1 for non-layer rows
    formula: str

    @property
    def total(self) -> int:
        return self.per_layer * self.n_layers


def _norm_size(c: ModelConfig) -> int:
    return c.d_model * (2 if c.norm == "layernorm" else 1)


def _attention(c: ModelConfig) -> tuple[int, str]:
    d, q, kv = c.d_model, c.n_head * c.d_head, c.n_kv_head * c.d_head
    weights = d * q + 2 * d * kv + q * d
    biases = q + 2 * kv + d if c.bias else 0
    if q == d and kv == d:
        formula = "4·d²" + (" + 4·d" if c.bias else "")
    else:
        formula = "d·(h·d_head) + 2·d·(h_kv·d_head) + (h·d_head)·d" + (" + biases" if c.bias else "")
    return weights + biases, formula


def _feed_forward(c: ModelConfig) -> tuple[int, str]:
    n_in = 2 if c.gated else 1
    weights = (n_in + 1) * c.d_model * c.d_ff
    biases = n_in * c.d_ff + c.d_model if c.bias else 0
    formula = f"{n_in + 1}·d·d_ff" + (f" + {n_in}·d_ff + d" if c.bias else "")
    return weights + biases, formula


def _head(c: ModelConfig) -> tuple[int, str]:
    d, v, n = c.d_model, c.vocab_size, c.num_labels
    lm = 0 if c.tie_embeddings else d * v
    tied = " (tied to the embedding)" if c.tie_embeddings else " + d·V"
    if c.head == "lm":
        return lm, "0" + tied if c.tie_embeddings else "d·V"
    if c.head == "mlm":
        return d * d + d + 2 * d + v + lm, "d² + d + 2·d + V" + tied
    if c.head == "sequence-classification":
        if c.arch == "encoder":
            return d * d + d + d * n + n, "pooler d² + d, classifier d·labels + labels"
        return d * n, "d·labels"
    if c.head == "token-classification":
        return d * n + n, "d·labels + labels"
    if c.head == "question-answering":
        return 2 * d + 2, "2·d + 2 (start and end)"
    return 0, "no head"


def _stack_rows(c: ModelConfig, stack: str, n_layer: int, cross: bool) -> list[ParamRow]:
    attention, attention_formula = _attention(c)
    ffn, ffn_formula = _feed_forward(c)
    n_norms = 3 if cross else 2
    rows = [ParamRow(stack, "attention", attention, n_layer, attention_formula)]
    if cross:
        rows.append(ParamRow(stack, "cross-attention", attention, n_layer, attention_formula))
    rows.append(ParamRow(stack, "feed-forward", ffn, n_layer, ffn_formula))
    norm_name = "2·d" if c.norm == "layernorm" else "d"
    rows.append(ParamRow(stack, "norms", n_norms * _norm_size(c), n_layer, f"{n_norms}·{norm_name}"))
    extra_embed, extra_formula = 0, []
    if c.pos_encoding == "learned":
        extra_embed += c.max_seq_len * c.d_model
        extra_formula.append("L·d positions")
    if c.type_vocab_size and stack != "decoder":
        extra_embed += c.type_vocab_size * c.d_model
        extra_formula.append("types·d")
    if extra_embed:
        rows.append(ParamRow(stack, "embeddings", extra_embed, 1, " + ".join(extra_formula)))
    stack_norms = (_norm_size(c) if c.embedding_norm else 0) + (_norm_size(c) if c.norm_position == "pre" else 0)
    if stack_norms:
        rows.append(ParamRow(stack, "norms", stack_norms, 1, "embedding / final norm"))
    if c.pos_encoding == "relative":
        rows.append(ParamRow(stack, "position bias", c.relative_num_buckets * c.n_head, 1, "buckets·h"))
    return rows


def parameter_table(config: ModelConfig) -> list[ParamRow]:
    """Every parameter of the model, grouped by stack and component, from the config alone."""
    c = config
    rows = [ParamRow("model", "embeddings", c.vocab_size * c.d_model, 1, "V·d token embedding")]
    if c.has_encoder:
        rows += _stack_rows(c, "encoder", c.n_layer, cross=False)
    if c.has_decoder:
        n_dec = c.n_decoder_layer if c.arch == "encoder-decoder" else c.n_layer
        rows += _stack_rows(c, "decoder", n_dec, cross=c.arch == "encoder-decoder")
    head, head_formula = _head(c)
    rows.append(ParamRow("model", "head", head, 1, head_formula))
    return rows


def count_parameters(config: ModelConfig) -> int:
    """Total trainable parameters of the model a config describes (tied weights counted once)."""
    return sum(row.total for row in parameter_table(config))


def summarize(rows: list[ParamRow]) -> dict[tuple[str, str], int]:
    """Totals per (stack, component), leaving out empty ones (a tied head adds nothing)."""
    totals: dict[tuple[str, str], int] = defaultdict(int)
    for row in rows:
        if row.total:
            totals[(row.stack, row.component)] += row.total
    return dict(totals)


def _component_of(name: str) -> tuple[str, str]:
    parts = name.split(".")
    if parts[0] == "tok_emb":
        return "model", "embeddings"
    if parts[0] == "head":
        return "model", "head"
    stack = parts[0]
    if parts[1] == "layers":
        sub = parts[3]
        if sub == "attn":
            return stack, "attention"
        if sub == "cross_attn":
            return stack, "cross-attention"
        if sub == "ffn":
            return stack, "feed-forward"
        return stack, "norms"
    if parts[1] == "relative_bias":
        return stack, "position bias"
    if parts[1] in ("emb_norm", "final_norm"):
        return stack, "norms"
    return stack, "embeddings"


def count_model_parameters(model: torch.nn.Module) -> dict[tuple[str, str], int]:
    """Totals per (stack, component) counted from an instantiated lmlab model's tensors."""
    totals: dict[tuple[str, str], int] = defaultdict(int)
    for name, param in model.named_parameters():
        totals[_component_of(name)] += param.numel()
    return dict(totals)

