"""Span-constrained greedy decoding (lmlab.generation.constrained) on a tiny random Llama with a real BPE
tokenizer, against greedy decoding written out here (full forward pass, argmax, no cache)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmlab.generation.constrained import greedy_span
from lmlab.hub.resolve import load_model
from tests.tiny import make_tiny_checkpoint

PROMPTS = ["Tom: hello there, how are you", "Anna: I will see you", "Bob: the meeting is at noon tomorrow, right"]
CONTEXT = "Anna told Tom that the meeting moved to Friday at noon, so he should call Bob before then."


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    loaded = load_model(str(make_tiny_checkpoint(tmp_path_factory.mktemp("span") / "model", max_seq_len=128)))
    return loaded.model, loaded.tokenizer


def reference_greedy(model, prompt: list[int], steps: int, ends: set[int]) -> tuple[list[int], float]:
    """Plain greedy decoding: the whole sequence through the model each step, the argmax appended."""
    ids, logprob = list(prompt), 0.0
    with torch.no_grad():
        for _ in range(steps):
            scores = F.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)
            token = int(scores.argmax())
            if token in ends:
                break
            ids.append(token)
            logprob += float(scores[token])
    return ids[len(prompt):], logprob


def ends_of(model, tokenizer) -> set[int]:
    return {i for i in (model.config.eos_token_id, tokenizer.eos_id) if i is not None}


def test_every_answer_is_a_span_of_its_context(tiny):
    model, tokenizer = tiny
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    answers = greedy_span(model, tokenizer, prompts, [CONTEXT] * len(prompts), max_new_tokens=8)
    free = [reference_greedy(model, p, 8, ends_of(model, tokenizer))[0] for p in prompts]
    assert any(tokenizer.decode(f).strip() not in CONTEXT for f in free)  # the constraint has work to do
    for answer in answers:
        assert answer.tokens and answer.text and answer.text in CONTEXT
        assert b"".join(tokenizer.token_bytes(t) for t in answer.tokens).lstrip() in CONTEXT.encode()


def test_the_answers_probability_is_its_log_likelihood(tiny):
    model, tokenizer = tiny
    prompt = tokenizer.encode(PROMPTS[0])
    answer = greedy_span(model, tokenizer, [prompt], [CONTEXT], max_new_tokens=6)[0]
    with torch.no_grad():
        logprobs = F.log_softmax(model(torch.tensor([prompt + answer.tokens])).logits[0].float(), dim=-1)
    expected = sum(float(logprobs[len(prompt) - 1 + k, t]) for k, t in enumerate(answer.tokens))
    assert answer.logprob == pytest.approx(expected, abs=1e-4)


def test_a_greedy_answer_that_is_already_a_span_is_unchanged(tiny):
    model, tokenizer = tiny
    prompts = [tokenizer.encode(p) for p in PROMPTS]  # of different lengths: the batch is left-padded
    free = [reference_greedy(model, p, 6, ends_of(model, tokenizer)) for p in prompts]
    assert all(tokens and tokenizer.token_bytes(tokens[0]).strip() for tokens, _ in free)
    # each context holds the free answer, so every token greedy chose was allowed
    contexts = [f"Someone wrote {tokenizer.decode(tokens)} and left." for tokens, _ in free]
    answers = greedy_span(model, tokenizer, prompts, contexts, max_new_tokens=6)
    for answer, (tokens, logprob) in zip(answers, free):
        assert answer.tokens == tokens
        assert answer.logprob == pytest.approx(logprob, abs=1e-4)


def test_end_probabilities_and_the_most_likely_prefix_by_hand(tiny):
    from lmlab.generation.constrained import most_likely_prefix

    model, tokenizer = tiny
    prompt = tokenizer.encode(PROMPTS[1])
    answer = greedy_span(model, tokenizer, [prompt], [CONTEXT], max_new_tokens=6)[0]
    ends = sorted(ends_of(model, tokenizer))
    with torch.no_grad():
        logprobs = F.log_softmax(model(torch.tensor([prompt + answer.tokens])).logits[0].float(), dim=-1)
    # after k answer tokens, P(end) is the total probability of the end tokens at the next position
    by_hand = [float(torch.logsumexp(logprobs[len(prompt) - 1 + k, ends], 0)) for k in range(1, len(answer.tokens) + 1)]
    assert len(answer.end_logprobs) in (len(answer.tokens) - 1, len(answer.tokens))
    assert answer.end_logprobs == pytest.approx(by_hand[:len(answer.end_logprobs)], abs=1e-4)
    totals = [sum(answer.token_logprobs[:k]) + by_hand[k - 1] for k in range(1, len(answer.end_logprobs) + 1)]
    k = max(range(len(totals)), key=totals.__getitem__) + 1
    best = most_likely_prefix(answer, tokenizer)
    assert best.tokens == answer.tokens[:k] and best.text == tokenizer.decode(answer.tokens[:k]).strip()
    assert best.logprob == pytest.approx(sum(answer.token_logprobs[:k]), abs=1e-6)
