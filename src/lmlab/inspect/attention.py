"""Attention maps: which tokens each token attends to, for one layer and head.

Row i of the map is the softmax distribution of token i's query over the keys
(so each row sums to 1). In a decoder the upper triangle is zero: a token
cannot look at the future.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lmlab.errors import LmlabError
from lmlab.io import save_figure
from lmlab.hub.resolve import LoadedModel
from lmlab.tokenizers.base import TokenizerProtocol

STACKS = ("encoder", "decoder", "cross")


@dataclass
class AttentionMap:
    query_tokens: list[str]
    key_tokens: list[str]
    weights: torch.Tensor  # [T_query, T_key]
    layer: int
    head: int
    stack: str


def _token_labels(tokenizer: TokenizerProtocol | None, ids: list[int]) -> list[str]:
    return [tokenizer.token_bytes(i).decode("utf-8", errors="replace") for i in ids]


def attention_map(loaded: LoadedModel, text: str, layer: int = 0, head: int = 0, stack: str | None = None,
                  target: str | None = None) -> AttentionMap:
    """Run the model on `text` and return the attention weights of one layer and head.

    For encoder-decoder models, `target` is the decoder's text (default: the
    input again); `stack` picks encoder self-attention, decoder self-attention or
    cross-attention.
    """
    model, tokenizer, config = loaded.model, loaded.tokenizer, loaded.model.config
    if tokenizer is None:
        raise LmlabError(f"{loaded.reference} has no tokenizer, so text cannot be turned into tokens")
    stack = stack or ("encoder" if config.arch == "encoder" else "decoder")
    allowed = {"encoder": ("encoder",), "decoder": ("decoder",),
               "encoder-decoder": ("encoder", "decoder", "cross")}[config.arch]
    if stack not in allowed:
        raise LmlabError(f"a {config.arch} model has no {stack} attention (choose {', '.join(allowed)})")
    ids = tokenizer.encode(text, add_special_tokens=config.arch == "encoder")
    if not ids:
        raise LmlabError("the text is empty")
    if len(ids) > config.max_seq_len:
        raise LmlabError(f"the text is {len(ids)} tokens, longer than the model's context window "
                         f"({config.max_seq_len})")
    n_layers = len((model.encoder if stack == "encoder" else model.decoder).layers)
    if not 0 <= layer < n_layers:
        raise LmlabError(f"layer must be between 0 and {n_layers - 1}, not {layer}")
    if not 0 <= head < config.n_head:
        raise LmlabError(f"head must be between 0 and {config.n_head - 1}, not {head}")
    input_ids = torch.tensor([ids])
    target_ids = ids
    kwargs = {}
    if config.arch == "encoder-decoder":
        start = config.decoder_start_token_id if config.decoder_start_token_id is not None else 0
        target_ids = [start] + tokenizer.encode(target if target is not None else text)
        kwargs["decoder_input_ids"] = torch.tensor([target_ids])
    with torch.inference_mode():
        out = model(input_ids, output_attentions=True, **kwargs)
    weights = out.attentions[stack][layer][0, head].float()
    query_ids = ids if stack == "encoder" else target_ids
    key_ids = ids if stack in ("encoder", "cross") else target_ids
    return AttentionMap(_token_labels(tokenizer, query_ids), _token_labels(tokenizer, key_ids), weights, layer,
                        head, stack)


def format_table(amap: AttentionMap, digits: int = 2) -> str:
    """The map as text: one row per query token, one column per key token."""
    width = max(6, digits + 3)
    labels = [repr(t)[1:-1][:width] for t in amap.key_tokens]
    lines = [" " * 14 + " ".join(f"{label:>{width}}" for label in labels)]
    for token, row in zip(amap.query_tokens, amap.weights.tolist(), strict=True):
        cells = " ".join(f"{w:>{width}.{digits}f}" for w in row)
        lines.append(f"{repr(token)[1:-1][:13]:<13} {cells}")
    return "\n".join(lines)


def plot(amap: AttentionMap, out: Path, title: str = "") -> Path:
    """Draw the map as a heatmap (keys across, queries down) and save it as an image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_q, n_k = amap.weights.shape
    size = max(4.0, 0.32 * max(n_q, n_k) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(amap.weights.numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n_k), [repr(t)[1:-1] for t in amap.key_tokens], rotation=90, fontsize=8)
    ax.set_yticks(range(n_q), [repr(t)[1:-1] for t in amap.query_tokens], fontsize=8)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ax.set_title(title or f"{amap.stack} attention, layer {amap.layer}, head {amap.head}")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="attention weight")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        save_figure(fig, out, dpi=120)
    finally:
        plt.close(fig)
    return out
