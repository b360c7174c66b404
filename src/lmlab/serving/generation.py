"""Completions and chat completions: OpenAI's requests turned into engine requests, and their events
into OpenAI's responses (one JSON object, or a stream of chunks).

A request's prompts (a list of prompts, each answered `n` times) become one engine request per
choice, numbered as OpenAI numbers them (prompt i, sample j -> choice i * n + j). A seeded request
gives choice j the seed `seed + j`, so the choices differ but each is reproducible. Temperature 0
is greedy decoding. Log-probabilities are those of the model's distribution (before temperature,
top-k and top-p), in OpenAI's completions shape (`tokens`, `token_logprobs`, `top_logprobs`,
`text_offset`) or chat shape (`content: [{token, logprob, bytes, top_logprobs}]`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from lmlab.errors import LmlabError
from lmlab.generation.chat import chat_ids
from lmlab.generation.engine import EngineRequest, TokenEvent
from lmlab.generation.sampling import GenerationConfig
from lmlab.serving.errors import APIError, bad_request
from lmlab.serving.schemas import ChatCompletionRequest, CompletionRequest, _Sampling
from lmlab.serving.streaming import sse
from lmlab.tokenizers.base import TokenizerProtocol

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "cancelled": "abort"}
COMPLETION_DEFAULT_MAX_TOKENS = 16  # as OpenAI's completions endpoint


@dataclass
class Job:
    """One HTTP request's generations, ready to submit, and what its response needs."""

    kind: str  # "completion" or "chat"
    model: str
    prompts: list[list[int]]
    requests: list[EngineRequest]
    logprobs: int | None  # None: none asked for
    include_usage: bool = False
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.id = ("cmpl-" if self.kind == "completion" else "chatcmpl-") + uuid.uuid4().hex[:24]


def completion_job(body: CompletionRequest, tokenizer: TokenizerProtocol, window: int, model: str) -> Job:
    prompts = []
    for i, prompt in enumerate(body.prompts()):
        param = "prompt" if len(body.prompts()) == 1 else f"prompt[{i}]"
        if isinstance(prompt, str):
            if tokenizer is None:
                raise bad_request("this model has no tokenizer: give the prompt as token ids", param)
            prompt = tokenizer.encode(prompt, add_special_tokens=True)
        if not prompt:
            raise bad_request("the prompt is empty: give at least one token to continue", param)
        prompts.append(prompt)
    return _job("completion", body, prompts, tokenizer, window, model, body.max_tokens, body.logprobs)


def chat_job(body: ChatCompletionRequest, tokenizer: TokenizerProtocol, window: int, model: str) -> Job:
    try:
        prompt = chat_ids(tokenizer, body.conversation())
    except LmlabError as err:
        raise bad_request(str(err), "messages") from None
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    top = (body.top_logprobs or 0) if body.logprobs else None
    return _job("chat", body, [prompt], tokenizer, window, model, max_tokens, top)


def _job(kind: str, body: _Sampling, prompts: list[list[int]], tokenizer: TokenizerProtocol, window: int, model: str,
         max_tokens: int | None, logprobs: int | None) -> Job:
    if body.stop and tokenizer is None:
        raise bad_request("stop strings need a tokenizer to read the text, and this model has none", "stop")
    requests = []
    for prompt in prompts:
        max_new = _room(prompt, window, max_tokens, kind, "prompt" if kind == "completion" else "messages")
        for j in range(body.n):
            config = GenerationConfig(
                max_new_tokens=max_new, do_sample=body.temperature > 0,
                temperature=body.temperature if body.temperature > 0 else 1.0, top_k=max(body.top_k, 0),
                top_p=body.top_p, repetition_penalty=body.repetition_penalty, stop=body.stop_strings(),
                seed=None if body.seed is None else body.seed + j)
            requests.append(EngineRequest(prompt, config, presence_penalty=body.presence_penalty,
                                          frequency_penalty=body.frequency_penalty, top_logprobs=logprobs))
    return Job(kind, model, prompts, requests, logprobs, body.include_usage)


def _room(prompt: list[int], window: int, max_tokens: int | None, kind: str, param: str) -> int:
    """How many tokens to generate: as asked, if the prompt and they fit the context window."""
    if len(prompt) >= window:
        raise bad_request(f"the prompt is {len(prompt)} tokens long, but the model's context window holds {window} "
                          "tokens, including the generated ones: shorten the prompt", param,
                          "context_length_exceeded")
    if max_tokens is None:
        return min(COMPLETION_DEFAULT_MAX_TOKENS, window - len(prompt)) if kind == "completion" else window - len(prompt)
    if len(prompt) + max_tokens > window:
        raise bad_request(f"the prompt ({len(prompt)} tokens) and max_tokens ({max_tokens}) need "
                          f"{len(prompt) + max_tokens} tokens, but the model's context window holds {window}: "
                          "shorten the prompt or ask for fewer tokens", "max_tokens", "context_length_exceeded")
    return max_tokens


@dataclass
class Choice:
    """What one generation has produced so far."""

    text: str = ""
    tokens: int = 0
    logprobs: list[TokenEvent] = field(default_factory=list)
    finish_reason: str | None = None

    def add(self, event: TokenEvent) -> None:
        if event.finish_reason == "error":
            raise APIError(500, "the engine failed while generating this answer", code="engine_error")
        self.text += event.text
        if event.token_id >= 0:
            self.tokens += 1
            if event.logprob is not None and event.finish_reason != "eos":  # the end-of-sequence token is no text
                self.logprobs.append(event)
        if event.finish_reason is not None:
            self.finish_reason = FINISH_REASONS[event.finish_reason]


class Responder:
    """OpenAI's response shapes for one job."""

    def __init__(self, job: Job, tokenizer: TokenizerProtocol) -> None:
        self.job = job
        self.tokenizer = tokenizer

    def usage(self, choices: list[Choice]) -> dict:
        prompt = sum(len(p) for p in self.job.prompts)
        completion = sum(c.tokens for c in choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def response(self, choices: list[Choice]) -> dict:
        """The whole answer, when not streaming."""
        job = self.job
        if job.kind == "completion":
            body = [{"index": i, "text": c.text, "logprobs": self.logprobs(c.logprobs),
                     "finish_reason": c.finish_reason} for i, c in enumerate(choices)]
            obj = "text_completion"
        else:
            body = [{"index": i, "message": {"role": "assistant", "content": c.text},
                     "logprobs": self.logprobs(c.logprobs), "finish_reason": c.finish_reason}
                    for i, c in enumerate(choices)]
            obj = "chat.completion"
        return {"id": job.id, "object": obj, "created": job.created, "model": job.model, "choices": body,
                "usage": self.usage(choices), "system_fingerprint": None}

    def chunk(self, index: int, text: str, events: list[TokenEvent], finish_reason: str | None,
              role: bool = False) -> dict:
        """One streamed piece of choice `index`."""
        job = self.job
        logprobs = self.logprobs(events) if events else None
        if job.kind == "completion":
            choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
            obj = "text_completion"
        else:
            delta = {"role": "assistant", "content": text} if role else ({"content": text} if text else {})
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
            obj = "chat.completion.chunk"
        chunk = {"id": job.id, "object": obj, "created": job.created, "model": job.model, "choices": [choice],
                 "system_fingerprint": None}
        if job.include_usage:
            chunk["usage"] = None
        return chunk

    def usage_chunk(self, choices: list[Choice]) -> dict:
        job = self.job
        return {"id": job.id, "object": "text_completion" if job.kind == "completion" else "chat.completion.chunk",
                "created": job.created, "model": job.model, "choices": [], "usage": self.usage(choices),
                "system_fingerprint": None}

    async def stream(self, events: AsyncIterator[tuple[int, TokenEvent]], choices: list[Choice]):
        """The server-sent events of a streamed answer, ending with the usage chunk (if asked) and [DONE]."""
        if self.job.kind == "chat":
            for i in range(len(choices)):
                yield sse(self.chunk(i, "", [], None, role=True))
        async for index, event in events:
            choice = choices[index]
            try:
                choice.add(event)
            except APIError as err:
                yield sse(err.body())
                return
            picked = [event] if choice.logprobs and choice.logprobs[-1] is event else []
            if event.text or picked or choice.finish_reason is not None:
                yield sse(self.chunk(index, event.text, picked, choice.finish_reason))
        if self.job.include_usage:
            yield sse(self.usage_chunk(choices))
        yield sse("[DONE]")

    def _token(self, token_id: int) -> tuple[str, list[int]]:
        """A token's text and bytes (a model's vocabulary may pass its tokenizer's: those tokens have none)."""
        if self.tokenizer is None:
            raw = str(token_id).encode()
        else:
            raw = self.tokenizer.token_bytes(token_id) if token_id < self.tokenizer.vocab_size else b""
        return raw.decode("utf-8", errors="replace"), list(raw)

    def _entry(self, token_id: int, logprob: float) -> dict:
        token, raw = self._token(token_id)
        return {"token": token, "logprob": logprob, "bytes": raw}

    def logprobs(self, events: list[TokenEvent]) -> dict | None:
        if self.job.logprobs is None:
            return None
        if self.job.kind == "chat":
            content = [{**self._entry(e.token_id, e.logprob),
                        "top_logprobs": [self._entry(t, lp) for t, lp in e.top_logprobs or []]} for e in events]
            return {"content": content, "refusal": None}
        tokens = [self._token(e.token_id)[0] for e in events]
        offsets, at = [], 0
        for token in tokens:
            offsets.append(at)
            at += len(token)
        return {"tokens": tokens, "token_logprobs": [e.logprob for e in events],
                "top_logprobs": [{self._token(t)[0]: lp for t, lp in e.top_logprobs or []} for e in events],
                "text_offset": offsets}
