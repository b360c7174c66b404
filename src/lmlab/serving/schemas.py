"""The request bodies of OpenAI's API, validated: a wrong type or value is a 400 naming the field.

The fields and their ranges follow OpenAI's API reference (completions, chat completions,
embeddings), with the extensions vLLM and llama.cpp's server accept (`top_k`,
`repetition_penalty`). Types are strict (no "5" for 5, no true for 1); fields this server does not
know are ignored, as OpenAI's clients send some.
"""

from __future__ import annotations

import json
import re
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lmlab.serving.errors import bad_request

MAX_STOP = 4  # as OpenAI's API
MAX_N = 16
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Request):
    include_usage: bool = False


class _Sampling(_Request):
    """The inference parameters shared by completions and chat completions."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=-1)  # extension; 0 or -1: off
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    repetition_penalty: float = Field(1.0, gt=0)  # extension (CTRL)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _check_stop(self):
        stops = self.stop_strings()
        if len(stops) > MAX_STOP:
            raise bad_request(f"stop takes at most {MAX_STOP} strings, not {len(stops)}", "stop")
        if any(s == "" for s in stops):
            raise bad_request("stop strings must not be empty", "stop")
        if self.stream_options is not None and not self.stream:
            raise bad_request("stream_options is only allowed with stream: true", "stream_options")
        return self

    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_Sampling):
    """POST /v1/completions: continue a prompt (text, or token ids), or several."""

    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False

    @model_validator(mode="after")
    def _check_prompt(self):
        if self.echo:
            raise bad_request("echo is not supported by this server", "echo")
        if isinstance(self.prompt, list) and not self.prompt:
            raise bad_request("prompt is an empty list", "prompt")
        return self

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: a text or a list of token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if all(isinstance(p, int) for p in self.prompt):
            return [list(self.prompt)]
        return list(self.prompt)


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions: the assistant's reply to a conversation, in the model's chat template."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @model_validator(mode="after")
    def _check_logprobs(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
        return self

    def conversation(self) -> list[dict[str, str]]:
        """The messages as chat templates take them ("developer" is OpenAI's newer name for "system")."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class EmbeddingRequest(_Request):
    """POST /v1/embeddings: one vector per input text (or list of token ids)."""

    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    def inputs(self) -> list[str | list[int]]:
        if isinstance(self.input, str):
            return [self.input]
        if not self.input:
            raise bad_request("input is an empty list", "input")
        if all(isinstance(x, int) for x in self.input):
            return [list(self.input)]
        return list(self.input)


RequestT = TypeVar("RequestT", bound=_Request)
_TYPE_NAME = re.compile(r"^(str|int|float|bool|list|dict|none|literal|.*\[.*)$", re.IGNORECASE)


def _param(loc: tuple) -> str | None:
    """A field's path as a client writes it (`messages[0].content`), from pydantic's location."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not _TYPE_NAME.match(part):
            path += f".{part}" if path else part
    return path or None


def parse_request(body: bytes, schema: type[RequestT]) -> RequestT:
    """The body as a validated request, or a 400 naming the first field at fault."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise bad_request(f"the request body is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        param = _param(first["loc"])
        if first["type"] == "missing":
            raise bad_request(f"{param} is required", param) from None
        raise bad_request(f"{param}: {first['msg'].lower()}, not {json.dumps(first['input'])[:80]}",
                          param) from None
