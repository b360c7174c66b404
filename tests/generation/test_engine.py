"""The continuous-batching engine: each request writes under continuous batching (random arrivals, mixed
prompt lengths, greedy and seeded sampling, penalties, stop strings, more requests than slots) exactly
the tokens it writes alone; cancelling frees the slot for the next queued request; chunked prefill
gives one-shot prefill's logits; log-probabilities and OpenAI's penalties match direct computations
from the model's logits; bad input gets one clear line."""

from __future__ import annotations

import random
import threading

import pytest
import torch

from lmlab.config import get_preset
from lmlab.errors import LmlabError
from lmlab.generation import GenerationConfig
from lmlab.generation.engine import Engine, EngineRequest
from lmlab.models import Transformer

from .conftest import random_prompts, tiny_pair


def _requests(tokenizer) -> list[EngineRequest]:
    """Mixed prompt lengths (1 to 40 tokens) and settings, each request with its own."""
    lengths = (5, 40, 1, 23, 9, 31, 14, 3, 36, 17)
    prompts = random_prompts(lengths, seed=7)
    configs = [
        GenerationConfig(max_new_tokens=12),
        GenerationConfig(max_new_tokens=20, do_sample=True, seed=1),
        GenerationConfig(max_new_tokens=7, do_sample=True, seed=2, temperature=0.7, top_k=20),
        GenerationConfig(max_new_tokens=16, stop=("e ",)),
        GenerationConfig(max_new_tokens=20, do_sample=True, seed=3, top_p=0.8, stop=("a",)),
        GenerationConfig(max_new_tokens=15, repetition_penalty=1.3),
        GenerationConfig(max_new_tokens=9, do_sample=True, seed=1),  # the same seed as request 1
        GenerationConfig(max_new_tokens=20, do_sample=True, seed=5, temperature=1.5),
        GenerationConfig(max_new_tokens=18),
        GenerationConfig(max_new_tokens=11, do_sample=True, seed=6, repetition_penalty=1.2),
    ]
    requests = [EngineRequest(prompt, config) for prompt, config in zip(prompts, configs)]
    requests[8].frequency_penalty, requests[8].presence_penalty = 0.8, 0.5
    requests[0].top_logprobs = 3
    return requests


def _outcome(handle) -> tuple:
    done = handle.result()
    return done.tokens, done.text, done.finish_reason


def test_each_request_writes_under_continuous_batching_what_it_writes_alone(tiny_checkpoint):
    _, model, tokenizer = tiny_checkpoint
    requests = _requests(tokenizer)
    alone = []
    for request in requests:
        engine = Engine(model, tokenizer, slots=1, max_len=64, prefill_chunk=8)
        handle = engine.submit(request)
        engine.run_until_idle()
        alone.append(_outcome(handle))
    assert {reason for _, _, reason in alone} >= {"length", "stop"}

    engine = Engine(model, tokenizer, slots=3, max_len=64, prefill_chunk=8)
    arrivals = random.Random(0)
    handles, waiting = [], list(requests)
    while waiting or engine.step():
        for _ in range(min(len(waiting), arrivals.choice([0, 0, 1, 2, 4]))):
            handles.append(engine.submit(waiting.pop(0)))
        assert engine.running <= 3
    assert [_outcome(handle) for handle in handles] == alone
    assert [len(h.result().prompt_ids) for h in handles] == [len(r.prompt_ids) for r in requests]


def test_more_requests_than_slots_queue_and_all_finish_in_a_background_thread(tiny_checkpoint):
    _, model, tokenizer = tiny_checkpoint
    requests = _requests(tokenizer)
    engine = Engine(model, tokenizer, slots=2, max_len=64, prefill_chunk=16)
    handles = [engine.submit(request) for request in requests]
    assert (engine.queued, engine.running, engine.slots) == (10, 0, 2)
    engine.step()
    assert (engine.queued, engine.running) == (8, 2)
    engine.run_until_idle()
    assert (engine.queued, engine.running) == (0, 0)
    expected = [_outcome(h) for h in handles]

    engine = Engine(model, tokenizer, slots=2, max_len=64, prefill_chunk=16)
    engine.start()
    streamed: dict[int, list] = {}

    def submit_and_read(i: int) -> None:
        events = list(engine.submit(requests[i]))
        streamed[i] = [[e.token_id for e in events], "".join(e.text for e in events), events[-1].finish_reason]

    threads = [threading.Thread(target=submit_and_read, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    engine.shutdown()
    assert [tuple(streamed[i]) for i in range(len(requests))] == expected


def test_a_cancelled_request_frees_its_slot_for_the_next_queued_one(tiny_checkpoint):
    _, model, tokenizer = tiny_checkpoint
    first, second = random_prompts((6, 4), seed=3)
    engine = Engine(model, tokenizer, slots=1, max_len=64)
    running = engine.submit(EngineRequest(first, GenerationConfig(max_new_tokens=50)))
    queued = engine.submit(EngineRequest(second, GenerationConfig(max_new_tokens=5)))
    engine.step()  # the prefill writes the first token, the decode step the second
    assert (engine.running, engine.queued, len(running.completion.tokens)) == (1, 1, 2)
    running.cancel()
    engine.step()
    assert running.result().finish_reason == "cancelled" and len(running.result().tokens) == 2
    assert (engine.running, engine.queued) == (1, 0)
    assert len(queued.completion.tokens) == 2  # its prefill (first token) and a decode step ran in that step
    engine.run_until_idle()
    alone = Engine(model, tokenizer, slots=1, max_len=64)
    expected = alone.submit(EngineRequest(second, GenerationConfig(max_new_tokens=5)))
    alone.run_until_idle()
    assert queued.result().tokens == expected.result().tokens

    never = engine.submit(EngineRequest(second, GenerationConfig(max_new_tokens=5)))
    never.cancel()
    assert not engine.step()
    assert never.result().finish_reason == "cancelled" and never.result().tokens == []


@pytest.mark.parametrize("chunk", [1, 7, 16])
def test_chunked_prefill_gives_the_logits_of_one_shot_prefill(chunk):
    model = Transformer(get_preset("tiny-llama").replace(max_seq_len=64)).init_weights(seed=0).eval()
    prompt = torch.tensor(random_prompts((45,), seed=2))
    with torch.no_grad():
        expected = model(prompt).logits[0]
        cache = model.new_slot_cache(slots=3, max_len=64)
        cache.lengths[2] = 9  # another slot's state must not matter
        pieces = []
        for start in range(0, prompt.shape[1], chunk):
            piece = prompt[:, start : start + chunk]
            cache.prefill(1, piece.shape[1])
            pieces.append(model(piece, cache=cache).logits[0])
    torch.testing.assert_close(torch.cat(pieces), expected, atol=1e-5, rtol=0)
    assert cache.lengths == [0, 45, 9]


def test_log_probabilities_and_openai_penalties_follow_the_model_logits():
    model = Transformer(get_preset("tiny-llama").replace(max_seq_len=64)).init_weights(std=0.1, seed=0).eval()
    prompts = random_prompts((8, 13), seed=4)
    engine = Engine(model, slots=2, max_len=64)
    plain = engine.submit(EngineRequest(prompts[0], GenerationConfig(max_new_tokens=10), top_logprobs=5))
    penalized = engine.submit(EngineRequest(prompts[1], GenerationConfig(max_new_tokens=20), top_logprobs=0,
                                            presence_penalty=0.7, frequency_penalty=1.5))
    events = {id(h): [] for h in (plain, penalized)}
    engine.run_until_idle()
    for handle in (plain, penalized):
        events[id(handle)] = list(handle)
    for handle, k in ((plain, 5), (penalized, 0)):
        prompt, tokens = handle.result().prompt_ids, handle.result().tokens
        assert len(tokens) == len(events[id(handle)])
        counts = torch.zeros(model.config.vocab_size)
        for i, (token, event) in enumerate(zip(tokens, events[id(handle)])):
            with torch.no_grad():
                logits = model(torch.tensor([prompt + tokens[:i]])).logits[0, -1]
            logprobs = logits.log_softmax(-1)
            assert event.logprob == pytest.approx(float(logprobs[token]), abs=1e-5)
            if k:
                top = logprobs.topk(k)
                assert [t for t, _ in event.top_logprobs] == top.indices.tolist()
                assert [v for _, v in event.top_logprobs] == pytest.approx(top.values.tolist(), abs=1e-5)
            else:
                assert event.top_logprobs is None
            if handle is penalized:  # OpenAI: logit - frequency * count - presence * (count > 0)
                logits = logits - 1.5 * counts - 0.7 * (counts > 0).float()
            assert token == int(logits.argmax())
            counts[token] += 1
    assert len(set(penalized.result().tokens)) > len(set(plain.result().tokens))


def test_bad_input_gets_one_clear_line(tiny_checkpoint):
    _, model, tokenizer = tiny_checkpoint
    with pytest.raises(LmlabError, match="the engine runs decoder-only language models; this one is an "
                                         "encoder-decoder"):
        Engine(Transformer(get_preset("tiny-t5")))
    with pytest.raises(LmlabError, match="decoder-only"):
        Engine(Transformer(get_preset("tiny-bert")))
    engine = Engine(model, tokenizer, slots=1, max_len=32)
    with pytest.raises(LmlabError, match="the prompt is 40 tokens long, but the engine's slots hold 32 tokens"):
        engine.submit(EngineRequest(list(range(3, 43))))
    cut = engine.submit(EngineRequest(list(range(3, 43)), GenerationConfig(max_new_tokens=4, truncate=True)))
    assert cut.prompt_tokens == 28
    with pytest.raises(LmlabError, match="beam search runs through lmlab.generation.generate"):
        engine.submit(EngineRequest([5, 6], GenerationConfig(num_beams=2)))
    with pytest.raises(LmlabError, match="top_logprobs must be between 0 and 20"):
        engine.submit(EngineRequest([5, 6], top_logprobs=21))
    with pytest.raises(LmlabError, match="max_len must be between 2 and the model's context window"):
        Engine(model, tokenizer, max_len=1000)
    engine.shutdown()
    assert cut.result().finish_reason == "length" and len(cut.result().tokens) == 4
    with pytest.raises(LmlabError, match="shut down"):
        engine.submit(EngineRequest([5, 6]))
