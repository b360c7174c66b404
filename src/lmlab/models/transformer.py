"""The transformer: blocks, stacks, and the three families built from one config.

A block is attention then feed-forward, each wrapped in a residual connection
and a norm (Vaswani et al. 2017, section 3.1):
    post-norm (original, BERT):  x = Norm(x + Sublayer(x))
    pre-norm (GPT-2, Llama, T5): x = x + Sublayer(Norm(x)), plus a final Norm
A stack is token vectors + positions, then n_layer blocks. An encoder stack
attends both ways; a decoder stack attends causally and, in an encoder-decoder,
also cross-attends to the encoder's output.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from lmlab.config import ModelConfig
from lmlab.models.attention import Attention, additive_mask
from lmlab.models.cache import KVCache, SlotCache
from lmlab.models.feedforward import FeedForward, dropout
from lmlab.models.heads import PER_POSITION_HEADS, make_head
from lmlab.models.norms import make_norm
from lmlab.models.positions import RelativePositionBias, RotaryEmbedding, SinusoidalPositions


@dataclass
class ModelOutput:
    """What a forward pass returns.

    logits: [B, T, vocab] for lm/mlm heads, [B, num_labels] for sequence
    classification, [B, T, num_labels] for token classification, [B, T, 2] for
    question answering, None without a head. attentions maps "encoder",
    "decoder" and "cross" to one [B, n_head, T_query, T_key] tensor per layer
    when asked for.
    """

    logits: torch.Tensor | None
    hidden_states: torch.Tensor
    encoder_hidden_states: torch.Tensor | None = None
    attentions: dict[str, list[torch.Tensor]] = field(default_factory=dict)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, cross: bool) -> None:
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.attn_norm = make_norm(config)
        self.attn = Attention(config)
        self.cross_norm = make_norm(config) if cross else None
        self.cross_attn = Attention(config, cross=True) if cross else None
        self.ffn_norm = make_norm(config)
        self.ffn = FeedForward(config)
        self.dropout = dropout(config.dropout)

    def _sublayer(self, x: torch.Tensor, norm: nn.Module, fn, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.pre_norm:
            out, weights = fn(norm(x), **kwargs)
            return x + self.dropout(out), weights
        out, weights = fn(x, **kwargs)
        return norm(x + self.dropout(out)), weights

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
        memory: torch.Tensor | None,
        memory_mask: torch.Tensor | None,
        cache: KVCache | None,
        layer: int,
        need_weights: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        x, self_weights = self._sublayer(
            x, self.attn_norm, self.attn, mask=mask, is_causal=is_causal, rotary=rotary, cache=cache,
            layer=layer, need_weights=need_weights,
        )
        cross_weights = None
        if self.cross_attn is not None:
            x, cross_weights = self._sublayer(
                x, self.cross_norm, self.cross_attn, mask=memory_mask, memory=memory, cache=cache, layer=layer,
                need_weights=need_weights,
            )
        if self.pre_norm:
            x = x + self.dropout(self.ffn(self.ffn_norm(x)))
        else:
            x = self.ffn_norm(x + self.dropout(self.ffn(x)))
        return x, self_weights, cross_weights


class Stack(nn.Module):
    """Positions + n_layer blocks (+ final norm for pre-norm models)."""

    def __init__(self, config: ModelConfig, n_layer: int, causal: bool, cross: bool) -> None:
        super().__init__()
        self.causal = causal
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embeddings else 1.0
        self.learned_pos = nn.Embedding(config.max_seq_len, config.d_model) if config.pos_encoding == "learned" else None
        self.sinusoidal = (SinusoidalPositions(config.max_seq_len, config.d_model)
                           if config.pos_encoding == "sinusoidal" else None)
        self.rotary = (RotaryEmbedding(config.d_head, config.max_seq_len, config.rope_theta)
                       if config.pos_encoding == "rotary" else None)
        self.relative_bias = (
            RelativePositionBias(config.n_head, config.relative_num_buckets, config.relative_max_distance,
                                 bidirectional=not causal)
            if config.pos_encoding == "relative" else None
        )
        self.type_emb = nn.Embedding(config.type_vocab_size, config.d_model) if config.type_vocab_size else None
        self.emb_norm = make_norm(config) if config.embedding_norm else None
        self.emb_dropout = dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config, cross) for _ in range(n_layer))
        self.final_norm = make_norm(config) if config.norm_position == "pre" else None

    def embed(
        self, tokens: torch.Tensor, position_ids: torch.Tensor, token_type_ids: torch.Tensor | None
    ) -> torch.Tensor:
        x = tokens * self.embed_scale if self.embed_scale != 1.0 else tokens
        if self.learned_pos is not None:
            x = x + self.learned_pos(position_ids)
        if self.sinusoidal is not None:
            x = x + self.sinusoidal(position_ids).to(x.dtype)
        if self.type_emb is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(position_ids)
            x = x + self.type_emb(token_type_ids)
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        return self.emb_dropout(x)

    def _positions_and_mask(
        self, tokens: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None,
        cache: KVCache | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
        """Position ids (after the cached ones), the additive mask (padding, causality, relative bias),
        and whether SDPA's causal fast path can replace the mask."""
        batch, length, _ = tokens.shape
        past = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + length, device=tokens.device).expand(batch, length)
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None
        mask = additive_mask(attention_mask, length, past + length, past, self.causal, tokens.dtype)
        if self.relative_bias is not None:
            positions = torch.arange(past + length, device=tokens.device)
            bias = self.relative_bias(positions[past:], positions).to(tokens.dtype)
            if self.causal and mask is None and length > 1:
                mask = additive_mask(None, length, past + length, past, True, tokens.dtype)
            mask = bias if mask is None else mask + bias
        return position_ids, mask, self.causal and mask is None and past == 0 and length > 1

    def forward(
        self,
        tokens: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        cache: KVCache | SlotCache | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        batch, length, _ = tokens.shape
        if isinstance(cache, SlotCache):  # the cache prepared this pass's positions and mask, row by row
            if self.relative_bias is not None:
                raise ValueError("a slot cache needs absolute or rotary positions, not a relative bias")
            position_ids, mask, is_causal = cache.positions, cache.mask, cache.is_causal
        else:
            position_ids, mask, is_causal = self._positions_and_mask(tokens, attention_mask, position_ids, cache)
        cross_mask = None
        if memory_mask is not None and not bool(memory_mask.all()):
            cross_mask = additive_mask(memory_mask, length, memory_mask.shape[1], 0, False, tokens.dtype)
        rotary = self.rotary(position_ids) if self.rotary is not None else None
        x = self.embed(tokens, position_ids, token_type_ids)
        self_weights, cross_weights = [], []
        for i, block in enumerate(self.layers):
            x, w_self, w_cross = block(x, mask, is_causal, rotary, memory, cross_mask, cache, i, need_weights)
            if need_weights:
                self_weights.append(w_self)
                if w_cross is not None:
                    cross_weights.append(w_cross)
        if self.final_norm is not None:
            x = self.emb_dropout(self.final_norm(x))
        return x, self_weights, cross_weights


class Transformer(nn.Module):
    """An encoder, a decoder, or an encoder-decoder, with an optional task head.

    Token embeddings are shared between the stacks (and, when tied, with the LM head).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config.validate()
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = Stack(config, config.n_layer, causal=False, cross=False) if config.has_encoder else None
        n_dec = config.n_decoder_layer if config.arch == "encoder-decoder" else config.n_layer
        self.decoder = (Stack(config, n_dec, causal=True, cross=config.arch == "encoder-decoder")
                        if config.has_decoder else None)
        self.head = make_head(config, self.tok_emb)

    def init_weights(self, std: float = 0.02, seed: int | None = None) -> Transformer:
        """GPT-2 initialization: N(0, std) weights, zero biases, and residual output projections
        scaled by 1/sqrt(2 * n_layer) so the residual stream's variance does not grow with depth."""
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        n_blocks = sum(len(s.layers) for s in (self.encoder, self.decoder) if s is not None)
        for name, param in self.named_parameters():
            if param.dim() >= 2:
                scale = std / math.sqrt(2 * n_blocks) if name.endswith(("o_proj.weight", "down.weight")) else std
                with torch.no_grad():
                    param.copy_(torch.randn(param.shape, generator=generator) * scale)
            elif name.endswith("bias"):
                nn.init.zeros_(param)
            else:
                nn.init.ones_(param)
        return self

    def tie_weights(self) -> None:
        """Point the LM head at the token embedding again (after weights were assigned, not copied)."""
        if self.config.tie_embeddings and self.head is not None and hasattr(self.head, "proj"):
            self.head.proj.weight = self.tok_emb.weight

    def materialize(self, device: torch.device) -> Transformer:
        """Finish a model built on the meta device whose parameters were assigned from a checkpoint:
        re-tie shared weights and compute the fixed position tables."""
        self.tie_weights()
        for module in self.modules():
            if hasattr(module, "make_buffers"):
                module.make_buffers(device)
        return self

    @property
    def device(self) -> torch.device:
        """Where the model's tensors are (from its first tensor: reading a quantized table's `.weight`
        would dequantize it)."""
        return next(itertools.chain(self.parameters(), self.buffers())).device

    def new_cache(self, batch_size: int, max_len: int, dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache for the decoder, sized for max_len positions."""
        c = self.config
        norm = self.decoder.layers[0].attn_norm.weight
        return KVCache.allocate(len(self.decoder.layers), batch_size, c.n_kv_head, max_len, c.d_head,
                                dtype or norm.dtype, norm.device)

    def new_slot_cache(self, slots: int, max_len: int, dtype: torch.dtype | None = None) -> SlotCache:
        """An empty decoder KV cache of `slots` independent sequences of up to max_len positions each."""
        c = self.config
        norm = self.decoder.layers[0].attn_norm.weight
        return SlotCache(len(self.decoder.layers), slots, c.n_kv_head, max_len, c.d_head, dtype or norm.dtype,
                         norm.device)

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None, need_weights: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        hidden, weights, _ = self.encoder(self.tok_emb(input_ids), attention_mask, None, token_type_ids,
                                          need_weights=need_weights)
        return hidden, weights

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        cache: KVCache | SlotCache | None = None,
        output_attentions: bool = False,
        last_logits_only: bool = False,
        logits_mask: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Run the model.

        Encoder-only and decoder-only models read `input_ids`. Encoder-decoder
        models encode `input_ids` (or reuse `encoder_hidden_states`) and decode
        `decoder_input_ids`. With a `cache`, only the new tokens are given and
        `attention_mask` covers cached + new positions.

        `logits_mask` (bool, [batch, seq]) has a per-position head (lm, mlm,
        token classification) compute only the positions it marks: logits come
        as [n_marked, n_out], in row-major order. Training on completion tokens
        alone skips the vocabulary projection, the largest matrix product of a
        small model, everywhere else (the idea of `logits_to_keep` in
        transformers, applied to arbitrary positions).
        """
        attentions: dict[str, list[torch.Tensor]] = {}
        c = self.config
        if c.arch == "encoder":
            hidden, attentions["encoder"] = self.encode(input_ids, attention_mask, token_type_ids, output_attentions)
            memory = None
        elif c.arch == "decoder":
            hidden, attentions["decoder"], _ = self.decoder(
                self.tok_emb(input_ids), attention_mask, position_ids, token_type_ids, cache=cache,
                need_weights=output_attentions,
            )
            memory = None
        else:
            memory = encoder_hidden_states
            if memory is None:
                memory, attentions["encoder"] = self.encode(input_ids, attention_mask, token_type_ids,
                                                            output_attentions)
            if decoder_input_ids is None:
                raise ValueError("an encoder-decoder model needs decoder_input_ids")
            hidden, attentions["decoder"], attentions["cross"] = self.decoder(
                self.tok_emb(decoder_input_ids), decoder_attention_mask, position_ids, None, memory,
                attention_mask, cache, output_attentions,
            )
        if cache is not None:
            cache.advance(hidden.shape[1])
        logits = None
        if self.head is not None:
            head_input = hidden[:, -1:] if last_logits_only else hidden
            head_mask = decoder_attention_mask if c.arch == "encoder-decoder" else attention_mask
            if logits_mask is not None:
                if c.head not in PER_POSITION_HEADS:
                    raise ValueError(f"logits_mask needs a per-position head {PER_POSITION_HEADS}, not {c.head!r}")
                head_input, head_mask = head_input[logits_mask], None
            logits = self.head(head_input, head_mask)
        return ModelOutput(
            logits=logits,
            hidden_states=hidden,
            encoder_hidden_states=memory,
            attentions=attentions if output_attentions else {},
        )
