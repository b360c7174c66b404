"""Chat templates: the Jinja2 programs that instruction-tuned models ship to turn a list of messages into the
one string they were trained on. They come from model files, so they run in Jinja2's sandbox, with the same
settings and helpers transformers' `apply_chat_template` gives them."""

from __future__ import annotations

import functools
import json
from datetime import datetime

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lmlab.errors import LmlabError


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    """Jinja2's own `tojson` escapes HTML characters; chat templates expect plain JSON."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


@functools.lru_cache(maxsize=16)
def _compile_chat_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as err:
        raise LmlabError(f"the chat template does not parse: {err.message} (line {err.lineno})") from None


def render_chat_template(
    template: str | None,
    messages: list[dict[str, str]],
    add_generation_prompt: bool,
    special_tokens: dict[str, str],
) -> str:
    """Render `messages` ([{"role": "user", "content": "..."}, ...]) with a chat template.

    The template sees `messages`, `add_generation_prompt`, `tools` and `documents` (None) and each
    special token as `bos_token`, `eos_token`, ..., as in transformers' `apply_chat_template`.
    """
    if template is None:
        raise LmlabError("this tokenizer has no chat template, so it cannot format a conversation")
    for message in messages:
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise LmlabError(f"a chat message must have a 'role' and a 'content', got {message!r}")
    messages = [{key: value for key, value in m.items() if value is not None} for m in messages]
    tokens = {f"{role}_token": token for role, token in special_tokens.items()}
    try:
        return _compile_chat_template(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, tools=None, documents=None, **tokens
        )
    except jinja2.TemplateError as err:
        raise LmlabError(f"the chat template refused this conversation: {err}") from None
    except LmlabError:
        raise
    except Exception as err:  # the template is code the model's author wrote: whatever it raises is its failure
        raise LmlabError(f"the chat template failed on this conversation ({type(err).__name__}: {err})") from None

