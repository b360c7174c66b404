"""Autoregressive decoding: one token at a time, each fed back as the next input.

Each step the model scores the next token (incremental.py runs it with the KV
cache), the sampler picks one (sampling.py: greedy, or a seeded draw after the
repetition penalty, temperature, top-k and top-p), and the token is appended.
A sequence ends at its end-of-sequence token, at a user stop string (cut from
the text), or after `max_new_tokens` (or when the context window is full).
Tokens are yielded as they come, with the text they complete, for streaming.
Decoder-only models decode through the continuous-batching engine (engine.py),
each row in its own cache slot; encoder-decoder models through the loop below.
With `num_beams` > 1, `generate` runs beam search instead (beam.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch

from lmlab.errors import LmlabError
from lmlab.generation.beam import beam_search
from lmlab.generation.engine import Engine, EngineRequest
from lmlab.generation.incremental import (CausalDecoder, EncoderDecoder, Prompts, check_generative,
                                          end_of_sequence_ids, fit_context, make_runner, padding_id, prompt_ids,
                                          room_for_new_tokens)
from lmlab.generation.sampling import GenerationConfig, next_token
from lmlab.generation.text import Completion, IncrementalText, first_stop
from lmlab.models import Transformer
from lmlab.tokenizers.base import TokenizerProtocol


@dataclass
class TextDelta:
    """One step of one row while streaming: the token chosen and the text it makes final.

    Text is held back while it may be the start of a stop string or an unfinished UTF-8 character,
    so `text` can be "" and a later delta can carry several tokens' worth. `finish_reason` is set on
    a row's last delta.
    """

    row: int
    token_id: int
    text: str
    finish_reason: str | None = None


def generate(
    model: Transformer,
    prompts: Prompts,
    config: GenerationConfig | None = None,
    tokenizer: TokenizerProtocol | None = None,
    attention_mask: torch.Tensor | None = None,
) -> list[Completion]:
    """Continue each prompt (text with a tokenizer, token ids, or a [B, T] tensor with its mask).

    Returns one Completion per prompt, in order; its prompt_ids are the tokens actually used (after
    truncation, if `config.truncate` allowed it).
    """
    config = config or GenerationConfig()
    if config.num_beams > 1:
        return [_beam_completion(prompt, tokens, model, config, tokenizer)
                for prompt, tokens in beam_search(model, prompts, config, tokenizer, attention_mask)]
    c = model.config
    rows = fit_context(prompt_ids(prompts, tokenizer, attention_mask), c.max_seq_len, config, c.arch)
    completions = [Completion(ids) for ids in rows]
    for delta in stream_generate(model, rows, config, tokenizer):
        done = completions[delta.row]
        done.tokens.append(delta.token_id)
        done.text += delta.text
        done.finish_reason = delta.finish_reason
    return completions


def _beam_completion(prompt: list[int], tokens: list[int], model: Transformer, config: GenerationConfig,
                     tokenizer) -> Completion:
    reason = "eos" if tokens and tokens[-1] in end_of_sequence_ids(model, tokenizer) else "length"
    text = tokenizer.decode(tokens, skip_special_tokens=True) if tokenizer is not None else ""
    cut = first_stop(text, config.stop)
    if cut is not None:
        text, reason = text[:cut], "stop"
    return Completion(prompt, tokens, text, reason)


def stream(model: Transformer, prompt: str | Sequence[int], config: GenerationConfig | None = None,
           tokenizer: TokenizerProtocol | None = None) -> Iterator[str]:
    """Yield the text of one prompt's continuation piece by piece, as the tokens are produced."""
    for delta in stream_generate(model, [prompt], config, tokenizer):
        if delta.text:
            yield delta.text


def stream_generate(
    model: Transformer,
    prompts: Prompts,
    config: GenerationConfig | None = None,
    tokenizer: TokenizerProtocol | None = None,
    attention_mask: torch.Tensor | None = None,
) -> Iterator[TextDelta]:
    """The decoding loop: yield each row's token (and the text it completes) as soon as it is chosen."""
    config = config or GenerationConfig()
    c = model.config
    check_generative(model, config, tokenizer)
    if config.num_beams > 1:
        raise LmlabError("beam search keeps several hypotheses until the end, so it cannot stream: use generate")
    rows = fit_context(prompt_ids(prompts, tokenizer, attention_mask), c.max_seq_len, config, c.arch)
    max_new = min(config.max_new_tokens, room_for_new_tokens(rows, c.max_seq_len, c.arch))
    if c.arch == "decoder":
        yield from _stream_with_engine(model, rows, replace(config, max_new_tokens=max_new), tokenizer)
        return
    eos_ids = end_of_sequence_ids(model, tokenizer)
    pad_id = padding_id(model, tokenizer)
    generator = None
    if config.seed is not None:
        generator = torch.Generator(model.device).manual_seed(config.seed)
    runner = make_runner(model, rows, pad_id, max_new)
    sampler = _Sampler(runner, config, generator)
    texts = [IncrementalText(tokenizer, config.stop) for _ in rows]
    running = [True] * len(rows)
    tokens = sampler.first()
    for step in range(max_new):
        last_step = step == max_new - 1
        for b, token in enumerate(tokens):
            if not running[b]:
                continue
            text, stopped = texts[b].add(token, final=token in eos_ids or last_step)
            reason = "eos" if token in eos_ids else "stop" if stopped else "length" if last_step else None
            running[b] = reason is None
            yield TextDelta(b, token, text, reason)
        if last_step or not any(running):
            return
        tokens = sampler.next([t if r else pad_id for t, r in zip(tokens, running)])


def _stream_with_engine(model: Transformer, rows: list[list[int]], config: GenerationConfig,
                        tokenizer) -> Iterator[TextDelta]:
    """A decoder-only batch through the continuous-batching engine, one slot per row, every prompt
    prefilled in the first step. Row b samples with seed + b, so its tokens do not depend on the
    other rows."""
    engine = Engine(model, tokenizer, slots=len(rows), max_len=max(map(len, rows)) + config.max_new_tokens,
                    prefill_chunk=sum(map(len, rows)))
    deltas: list[TextDelta] = []
    for b, row in enumerate(rows):
        seeded = config if config.seed is None else replace(config, seed=config.seed + b)
        engine.submit(EngineRequest(row, seeded, on_event=lambda event, b=b: deltas.append(
            TextDelta(b, event.token_id, event.text, event.finish_reason))))
    while engine.step():
        yield from deltas
        deltas.clear()


class _Sampler:
    """Choose each step's tokens from the runner's logits, inside torch.inference_mode (no autograd
    bookkeeping). Keeps the [B, V] set of tokens seen so far when a repetition penalty is on."""

    def __init__(self, runner: CausalDecoder | EncoderDecoder, config: GenerationConfig,
                 generator: torch.Generator | None) -> None:
        self.runner = runner
        self.config = config
        self.generator = generator
        self.seen = runner.seen_tokens() if config.repetition_penalty != 1 else None

    @torch.inference_mode()
    def first(self) -> list[int]:
        return self._choose(self.runner.start())

    @torch.inference_mode()
    def next(self, tokens: list[int]) -> list[int]:
        return self._choose(self.runner.step(torch.tensor(tokens, device=self.runner.input_ids.device)))

    def _choose(self, logits: torch.Tensor) -> list[int]:
        tokens = next_token(logits, self.config, self.seen, self.generator)
        if self.seen is not None:
            self.seen.scatter_(1, tokens[:, None], True)
        return tokens.tolist()
