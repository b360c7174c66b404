"""The original Transformer (transformer-base preset, scaled down) against PyTorch's own `nn.Transformer`.

`torch.nn.Transformer` implements Vaswani et al. 2017's encoder-decoder layers (post-norm, ReLU); it leaves out
what lmlab adds around them, which the reference here writes from the paper: token embeddings multiplied by
sqrt(d_model) (section 3.4), the sinusoidal table (section 3.5) computed by its formula in NumPy, and the
pre-softmax projection tied to the embeddings. Nothing else in the suite checks these pieces.
"""

import math

import numpy as np
import torch
from torch import nn

from lmlab.config import get_preset
from lmlab.models import Transformer
from lmlab.models.positions import sinusoidal_table


def paper_table(n_positions: int, d_model: int) -> np.ndarray:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model))."""
    table = np.zeros((n_positions, d_model))
    for pos in range(n_positions):
        for i in range(d_model // 2):
            angle = pos / 10000 ** (2 * i / d_model)
            table[pos, 2 * i], table[pos, 2 * i + 1] = math.sin(angle), math.cos(angle)
    return table


def test_sinusoidal_table_is_the_papers_formula():
    np.testing.assert_allclose(sinusoidal_table(128, 64).double().numpy(), paper_table(128, 64), atol=1e-5)


def _copy_attention(ours: nn.Module, theirs: nn.MultiheadAttention) -> None:
    theirs.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
    theirs.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
    theirs.out_proj.weight.copy_(ours.o_proj.weight)
    theirs.out_proj.bias.copy_(ours.o_proj.bias)


def _copy_norm(ours: nn.Module, theirs: nn.LayerNorm) -> None:
    theirs.weight.copy_(ours.weight)
    theirs.bias.copy_(ours.bias)


def _copy_ffn(ours: nn.Module, theirs: nn.Module) -> None:
    theirs.linear1.weight.copy_(ours.up.weight)
    theirs.linear1.bias.copy_(ours.up.bias)
    theirs.linear2.weight.copy_(ours.down.weight)
    theirs.linear2.bias.copy_(ours.down.bias)


def reference_from(model: Transformer) -> nn.Transformer:
    """An `nn.Transformer` (post-norm, ReLU, no final norms: the paper's) holding `model`'s weights."""
    c = model.config

    def encoder_layer() -> nn.TransformerEncoderLayer:
        return nn.TransformerEncoderLayer(c.d_model, c.n_head, c.d_ff, dropout=0.0, activation="relu",
                                          layer_norm_eps=c.norm_eps, batch_first=True, norm_first=False)

    def decoder_layer() -> nn.TransformerDecoderLayer:
        return nn.TransformerDecoderLayer(c.d_model, c.n_head, c.d_ff, dropout=0.0, activation="relu",
                                          layer_norm_eps=c.norm_eps, batch_first=True, norm_first=False)

    reference = nn.Transformer(c.d_model, c.n_head, batch_first=True,
                               custom_encoder=nn.TransformerEncoder(encoder_layer(), c.n_layer, enable_nested_tensor=False),
                               custom_decoder=nn.TransformerDecoder(decoder_layer(), c.n_decoder_layer)).eval()
    with torch.no_grad():
        for ours, theirs in zip(model.encoder.layers, reference.encoder.layers, strict=True):
            _copy_attention(ours.attn, theirs.self_attn)
            _copy_norm(ours.attn_norm, theirs.norm1)
            _copy_ffn(ours.ffn, theirs)
            _copy_norm(ours.ffn_norm, theirs.norm2)
        for ours, theirs in zip(model.decoder.layers, reference.decoder.layers, strict=True):
            _copy_attention(ours.attn, theirs.self_attn)
            _copy_norm(ours.attn_norm, theirs.norm1)
            _copy_attention(ours.cross_attn, theirs.multihead_attn)
            _copy_norm(ours.cross_norm, theirs.norm2)
            _copy_ffn(ours.ffn, theirs)
            _copy_norm(ours.ffn_norm, theirs.norm3)
    return reference


def test_tiny_transformer_base_equals_pytorchs_transformer_with_the_papers_embeddings():
    config, base = get_preset("tiny-transformer"), get_preset("transformer-base")
    paper = ("encoder-decoder", "sinusoidal", "post", "layernorm", "relu", True, True)
    for preset in (config, base):  # the tiny model is transformer-base in all but size
        assert (preset.arch, preset.pos_encoding, preset.norm_position, preset.norm, preset.activation,
                preset.scale_embeddings, preset.tie_embeddings) == paper
    torch.manual_seed(0)
    model = Transformer(config).eval()
    reference = reference_from(model)
    source = torch.randint(3, config.vocab_size, (2, 11))
    target = torch.randint(3, config.vocab_size, (2, 7))

    table = torch.tensor(paper_table(config.max_seq_len, config.d_model), dtype=torch.float32)
    embedding = model.tok_emb.weight.detach()

    def embed(tokens: torch.Tensor) -> torch.Tensor:
        return embedding[tokens] * math.sqrt(config.d_model) + table[: tokens.shape[1]]

    causal = nn.Transformer.generate_square_subsequent_mask(target.shape[1])
    with torch.no_grad():
        hidden = reference(embed(source), embed(target), tgt_mask=causal, tgt_is_causal=True)
        expected = hidden @ embedding.T
        logits = model(source, decoder_input_ids=target).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
