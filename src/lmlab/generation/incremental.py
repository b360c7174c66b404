"""Running a model one step at a time, and the prompts it runs on.

Incremental decoding with the KV cache: the prompt is run once (the prefill),
its keys and values are kept, and each later step runs only the newest token,
so a step costs one token's work instead of the whole sequence's.

A decoder-only model (GPT, Llama) reads the prompt and continues it. Batched
prompts of different lengths are padded on the LEFT, so that every row's last
prompt token sits in the same column and the new tokens of all rows are
appended together; the attention mask hides the padding and each row's
positions count only its real tokens (position = cumsum(mask) - 1, as
transformers' `generate` does).

An encoder-decoder model (T5) encodes the prompt once (padded on the right, as
usual for T5); its decoder then starts from the decoder-start token and
cross-attends to the encoder's output at every step, with the cross-attention
keys and values cached after the first step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmlab.errors import LmlabError
from lmlab.generation.sampling import GenerationConfig
from lmlab.models import Transformer
from lmlab.planning.limits import check_fits
from lmlab.planning.memory import plan_inference_memory
from lmlab.tokenizers.base import TokenizerProtocol

Prompts = str | Sequence[str] | Sequence[Sequence[int]] | torch.Tensor


def check_generative(model: Transformer, config: GenerationConfig, tokenizer: TokenizerProtocol | None = None) -> None:
    """Refuse a model that cannot write text, and stop strings without a tokenizer to read the text."""
    c = model.config
    if not c.has_decoder or c.head != "lm":
        raise LmlabError(f"generation needs a model with a language-modelling head; this one is an {c.arch} "
                         f"with the {c.head!r} head")
    if config.stop and tokenizer is None:
        raise LmlabError("stop strings need a tokenizer to read the generated text")


def make_runner(model: Transformer, rows: list[list[int]], pad_id: int, max_new: int) -> CausalDecoder | EncoderDecoder:
    """The step-by-step runner for this model's family, for `rows` and up to `max_new` new tokens; refused up
    front when its KV cache would not fit in memory."""
    check_cache_fits(model, len(rows), max(len(row) for row in rows) + max_new)
    return (CausalDecoder if model.config.arch == "decoder" else EncoderDecoder)(model, rows, pad_id, max_new)


def check_cache_fits(model: Transformer, rows: int, length: int) -> None:
    """Refuse a KV cache for `rows` sequences of `length` tokens larger than the memory available."""
    dtype = "bf16" if model.tok_emb.weight.dtype == torch.bfloat16 else "fp32"
    cache = plan_inference_memory(1, dtype, model.config, rows, length).kv_cache
    if cache is not None:
        check_fits(f"the KV cache of {rows:,} sequence(s) of {length:,} tokens", cache.bytes,
                   "generate fewer sequences (prompts x beams) or fewer new tokens")


@torch.inference_mode()
def next_token_logits(model: Transformer, rows: list[list[int]], pad_id: int = 0) -> torch.Tensor:
    """The model's logits [B, V] for the token that follows each prompt (one forward pass, no cache kept)."""
    runner = make_runner(model, rows, pad_id, 1)
    return runner.start().float()


def prompt_ids(prompts: Prompts, tokenizer: TokenizerProtocol | None = None,
               attention_mask: torch.Tensor | None = None) -> list[list[int]]:
    """Normalize prompts to one list of token ids per prompt (padding, if any, removed by the mask)."""
    if isinstance(prompts, torch.Tensor):
        ids = prompts if prompts.dim() == 2 else prompts[None]
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask.reshape(ids.shape)
        rows = [row[keep.bool()].tolist() for row, keep in zip(ids, mask)]
    else:
        if isinstance(prompts, str):
            prompts = [prompts]
        rows = []
        for prompt in prompts:
            if isinstance(prompt, str):
                if tokenizer is None:
                    raise LmlabError("text prompts need a tokenizer; this model has none, so give token ids")
                rows.append(tokenizer.encode(prompt, add_special_tokens=True))
            else:
                rows.append([int(i) for i in prompt])
    if not rows:
        raise LmlabError("no prompt to continue")
    if any(len(row) == 0 for row in rows):
        raise LmlabError("a prompt is empty: give at least one token of text to continue")
    return rows


def fit_context(rows: list[list[int]], max_seq_len: int, config: GenerationConfig, arch: str) -> list[list[int]]:
    """Check each prompt fits the context window, or cut it when `config.truncate` allows.

    A decoder-only prompt must leave room for at least one new token; truncation keeps its last
    tokens (those nearest the continuation), leaving room for max_new_tokens. An encoder input may
    fill the window; truncation keeps its first tokens, as tokenizers do.
    """
    limit = max_seq_len - 1 if arch == "decoder" else max_seq_len
    longest = max(len(row) for row in rows)
    if longest <= limit:
        return rows
    if not config.truncate:
        raise LmlabError(f"the prompt is {longest} tokens long, but the model's context window holds "
                         f"{max_seq_len} tokens{' including the new ones' if arch == 'decoder' else ''}: "
                         "shorten it, or allow truncation (--truncate)")
    if arch == "decoder":
        keep = max(1, max_seq_len - config.max_new_tokens)
        return [row[-keep:] for row in rows]
    return [row[:max_seq_len] for row in rows]


def room_for_new_tokens(rows: list[list[int]], max_seq_len: int, arch: str) -> int:
    """How many tokens the decoder can still write before its context window is full."""
    if arch == "decoder":
        return max_seq_len - max(len(row) for row in rows)
    return max_seq_len - 1  # the decoder-start token takes the first position


def end_of_sequence_ids(model: Transformer, tokenizer: TokenizerProtocol | None = None) -> set[int]:
    """The token ids that end a sequence: the model's and the tokenizer's end-of-sequence tokens."""
    ids = {model.config.eos_token_id, tokenizer.eos_id if tokenizer is not None else None}
    return {i for i in ids if i is not None}


def padding_id(model: Transformer, tokenizer: TokenizerProtocol | None = None) -> int:
    """The token that fills padding and finished rows: the pad token, else end-of-sequence, else 0.
    (Its value never matters, as the attention mask hides it, but it must be in the vocabulary.)"""
    candidates = (model.config.pad_token_id, tokenizer.pad_id if tokenizer is not None else None,
                  *sorted(end_of_sequence_ids(model, tokenizer)))
    return next((i for i in candidates if i is not None and 0 <= i < model.config.vocab_size), 0)


class CausalDecoder:
    """Decoder-only: prefill the left-padded prompts into the KV cache, then one token per step."""

    def __init__(self, model: Transformer, rows: list[list[int]], pad_id: int, max_new: int) -> None:
        self.model = model
        length = max(len(row) for row in rows)
        device = model.device
        self.input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long, device=device)
        self.mask = torch.ones(len(rows), length + max_new, dtype=torch.long, device=device)
        for b, row in enumerate(rows):
            self.input_ids[b, length - len(row):] = torch.tensor(row)
            self.mask[b, : length - len(row)] = 0
        self.padded = any(len(row) < length for row in rows)
        self.positions = (self.mask[:, :length].cumsum(-1) - 1).clamp(min=0)
        self.cache = model.new_cache(len(rows), length + max_new)

    def seen_tokens(self) -> torch.Tensor:
        """[B, V] True for each token in a row's prompt (the repetition penalty's context)."""
        seen = torch.zeros(self.input_ids.shape[0], self.model.config.vocab_size, dtype=torch.bool,
                           device=self.input_ids.device)
        return seen.scatter_(1, self.input_ids, self.mask[:, : self.input_ids.shape[1]].bool())

    def start(self) -> torch.Tensor:
        mask = self.mask[:, : self.input_ids.shape[1]] if self.padded else None
        out = self.model(self.input_ids, attention_mask=mask, position_ids=self.positions, cache=self.cache,
                         last_logits_only=True)
        self.positions = self.positions[:, -1:] + 1
        return out.logits[:, -1]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = self.mask[:, : self.cache.length + 1] if self.padded else None
        out = self.model(tokens[:, None], attention_mask=mask, position_ids=self.positions, cache=self.cache)
        self.positions += 1
        return out.logits[:, -1]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` (beam search continues the best hypotheses, each from its own cache)."""
        self.cache.reorder(index)
        self.positions = self.positions[index]
        self.mask = self.mask[index]


class EncoderDecoder:
    """Encoder-decoder: encode the right-padded inputs once, then decode from the decoder-start token,
    each step reusing the encoder output and the cached self- and cross-attention keys and values."""

    def __init__(self, model: Transformer, rows: list[list[int]], pad_id: int, max_new: int) -> None:
        self.model = model
        length = max(len(row) for row in rows)
        device = model.device
        self.input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long, device=device)
        mask = torch.zeros_like(self.input_ids)
        for b, row in enumerate(rows):
            self.input_ids[b, : len(row)] = torch.tensor(row)
            mask[b, : len(row)] = 1
        self.mask = mask if any(len(row) < length for row in rows) else None
        start = model.config.decoder_start_token_id
        self.start_ids = torch.full((len(rows), 1), pad_id if start is None else start, dtype=torch.long,
                                    device=device)
        self.cache = model.new_cache(len(rows), max_new + 1)
        self.memory: torch.Tensor | None = None

    def seen_tokens(self) -> torch.Tensor:
        """[B, V] True for the decoder-start token: the decoder's context so far."""
        seen = torch.zeros(self.start_ids.shape[0], self.model.config.vocab_size, dtype=torch.bool,
                           device=self.start_ids.device)
        return seen.scatter_(1, self.start_ids, True)

    def start(self) -> torch.Tensor:
        out = self.model(self.input_ids, attention_mask=self.mask, decoder_input_ids=self.start_ids,
                         cache=self.cache, last_logits_only=True)
        self.memory = out.encoder_hidden_states
        return out.logits[:, -1]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.model(None, attention_mask=self.mask, decoder_input_ids=tokens[:, None],
                         encoder_hidden_states=self.memory, cache=self.cache)
        return out.logits[:, -1]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` (beam search); the encoder output is the same for every beam of a prompt."""
        self.cache.reorder(index)
