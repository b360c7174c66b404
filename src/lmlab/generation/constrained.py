"""Span-constrained greedy decoding: a causal LM writes an answer that is a span of a given text.

Generative question answering lets the model write anything; extractive QA
wants a span of the context. Constraining the decoder closes the gap (the
"span-constrained" / extractive decoding of Castel et al. 2022, "How Optimal is
Greedy Decoding for Extractive Question Answering?"; constrained decoding in
general: Hokamp and Liu 2017): at each step only the tokens that keep the
answer a substring of the context are allowed, plus the end-of-sequence tokens
once the answer is not empty, and the most likely allowed token is taken.

The test is on bytes (each token's bytes, `Tokenizer.token_bytes`), so an
answer that continues *some* occurrence of the answer-so-far anywhere in the
context is allowed, whatever the context's own tokenization, and a character
split over two tokens is handled exactly. Leading whitespace of the answer is
ignored (" Paris" continues to "Paris"), but a token of whitespace alone cannot
start it. When the unconstrained greedy answer
already is a span, every token it chose was allowed, so the two are the same.

Greedy decoding need not find the most likely answer (Castel et al.'s point):
it stops only when an end token is the single likeliest next token, so a small
model copying from its context runs on past the answer. `most_likely_prefix`
searches, for free, the answers greedy passed on its way: every prefix of its
answer is a span too, and the decoding step after it already gave
P(end | prompt, prefix), so the prefix maximizing
log P(prefix | prompt) + log P(end | prompt, prefix) is the most likely complete
answer among them (an exact search restricted to the greedy path).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmlab.generation.incremental import (CausalDecoder, check_cache_fits, end_of_sequence_ids, fit_context,
                                          padding_id, room_for_new_tokens)
from lmlab.generation.sampling import GenerationConfig
from lmlab.models import Transformer


@dataclass
class SpanAnswer:
    """The tokens written (without the end token), their text (a span of the context, stripped) and
    log P(tokens | prompt) under the model's unconstrained distribution."""

    tokens: list[int]
    text: str
    logprob: float
    token_logprobs: list[float]  # log P(token_i | prompt, tokens_<i)
    end_logprobs: list[float]  # [i]: log P(the answer ends | prompt, tokens_<=i), over the end tokens


class _TokenBytes:
    """token id -> bytes, looked up once per id."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.cache = tokenizer, {}

    def __getitem__(self, i: int) -> bytes:
        if i not in self.cache:
            self.cache[i] = self.tokenizer.token_bytes(i)
        return self.cache[i]


def allowed_next(logits: torch.Tensor, written: bytes, context: bytes, ends: set[int],
                 spell: _TokenBytes) -> int | None:
    """The most likely token that keeps `written` + its bytes (leading whitespace dropped, and not only
    whitespace) inside `context`;
    None (the answer ends) when an end token is likelier, once `written` is a non-empty answer, or when no
    token continues the span. Candidates are tried best first, so usually only a few are looked at."""
    answered = bool(written.strip())
    for token in torch.argsort(logits, descending=True).tolist():
        if token in ends:
            if answered:
                return None
            continue
        if token < spell.tokenizer.vocab_size:
            span = (written + spell[token]).lstrip()
            if span and span in context:
                return token
    return None


def most_likely_prefix(answer: SpanAnswer, tokenizer) -> SpanAnswer:
    """The prefix of `answer` (at least one token) with the highest log P(prefix, end | prompt); the whole
    answer when no end probability is known (see the module docstring)."""
    if not answer.end_logprobs:
        return answer
    totals = torch.tensor(answer.token_logprobs[:len(answer.end_logprobs)]).cumsum(0) + \
        torch.tensor(answer.end_logprobs)
    k = int(totals.argmax()) + 1
    spell = _TokenBytes(tokenizer)
    text = b"".join(spell[t] for t in answer.tokens[:k]).decode("utf-8", errors="ignore").strip()
    return SpanAnswer(answer.tokens[:k], text, sum(answer.token_logprobs[:k]), answer.token_logprobs[:k],
                      answer.end_logprobs[:k])


@torch.inference_mode()
def greedy_span(model: Transformer, tokenizer, prompts: Sequence[list[int]], contexts: Sequence[str],
                max_new_tokens: int = 32) -> list[SpanAnswer]:
    """Greedy decoding of each prompt constrained to a span of its context (see the module docstring).

    Decoder-only models; the prompts run as one left-padded batch with the KV cache, so pass a few at a
    time. A prompt too long for the context window loses its oldest tokens (as generation with
    truncate=True). Each answer ends at an end-of-sequence token, after `max_new_tokens`, or when the
    window is full."""
    ends = end_of_sequence_ids(model, tokenizer)
    spell = _TokenBytes(tokenizer)
    targets = [c.encode("utf-8") for c in contexts]
    window = model.config.max_seq_len
    rows = fit_context([list(p) for p in prompts], window, GenerationConfig(max_new_tokens=max_new_tokens,
                                                                            truncate=True), "decoder")
    max_new_tokens = min(max_new_tokens, room_for_new_tokens(rows, window, "decoder"))
    check_cache_fits(model, len(rows), max(map(len, rows)) + max_new_tokens)
    fill = padding_id(model, tokenizer)
    runner = CausalDecoder(model, rows, fill, max_new_tokens)
    written, tokens = [b""] * len(rows), [[] for _ in rows]
    steps: list[list[float]] = [[] for _ in rows]
    ends_after: list[list[float]] = [[] for _ in rows]
    done = [False] * len(rows)
    end_list = torch.tensor(sorted(ends))
    logits = runner.start()
    for step in range(max_new_tokens):
        scores = F.log_softmax(logits.float(), dim=-1)
        chosen = [fill] * len(rows)  # a finished row runs on padding, its output unread
        for b in range(len(rows)):
            if not done[b] and tokens[b]:
                ends_after[b].append(float(torch.logsumexp(scores[b, end_list], 0)))
            token = None if done[b] else allowed_next(scores[b], written[b], targets[b], ends, spell)
            if token is None:
                done[b] = True
                continue
            chosen[b] = token
            tokens[b].append(token)
            written[b] += spell[token]
            steps[b].append(float(scores[b, token]))
        if all(done) or step == max_new_tokens - 1:
            break
        logits = runner.step(torch.tensor(chosen, device=logits.device))
    return [SpanAnswer(t, w.decode("utf-8", errors="ignore").strip(), sum(lp), lp, e)
            for t, w, lp, e in zip(tokens, written, steps, ends_after)]


__all__ = ["SpanAnswer", "allowed_next", "greedy_span", "most_likely_prefix"]
