"""A chat: a conversation rendered with the model's chat template, kept within its context window.

An instruction-tuned model was trained on conversations written in one exact
format (its chat template: role headers, end-of-turn tokens). Each reply is
generated from the whole conversation so far, rendered in that format and ending
with the assistant's header. A model only sees `max_seq_len` tokens, and the
reply needs `max_new_tokens` of them, so when the conversation grows too long
the oldest exchanges (a user message and the assistant's answer) are dropped;
the system message, if any, is always kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from lmlab.errors import LmlabError
from lmlab.generation.decode import stream
from lmlab.generation.sampling import GenerationConfig
from lmlab.models import Transformer
from lmlab.tokenizers.base import TokenizerProtocol


def chat_ids(tokenizer: TokenizerProtocol, messages: list[dict[str, str]]) -> list[int]:
    """The token ids of a conversation in the model's chat template, ending with the assistant's header.

    The template writes every special token itself (a BOS included), so the text is encoded without
    adding any, as transformers' `apply_chat_template(tokenize=True)` does.
    """
    if tokenizer is None or tokenizer.chat_template is None:
        raise LmlabError("this model has no chat template, so it cannot format a chat; use a plain prompt")
    return tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True))


def user_message(text: str, system: str | None = None) -> list[dict[str, str]]:
    """A one-message conversation, after an optional system message."""
    return [*([{"role": "system", "content": system}] if system else []), {"role": "user", "content": text}]


@dataclass
class Chat:
    """A conversation with a model: `add_user` then `respond` (streamed), turn after turn."""

    model: Transformer
    tokenizer: TokenizerProtocol
    config: GenerationConfig = field(default_factory=GenerationConfig)
    system: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        chat_ids(self.tokenizer, user_message("", self.system))  # fails early for a model without a chat template
        self.budget = self.model.config.max_seq_len - self.config.max_new_tokens
        if self.budget < 1:
            raise LmlabError(f"max_new_tokens ({self.config.max_new_tokens}) leaves no room for the conversation "
                             f"in the {self.model.config.max_seq_len}-token context window")

    def messages(self) -> list[dict[str, str]]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.turns

    def prompt_ids(self) -> list[int]:
        return chat_ids(self.tokenizer, self.messages())

    def add_user(self, text: str) -> int:
        """Add the user's message, then drop the oldest exchanges until the conversation leaves room for
        the reply. Returns how many messages were dropped."""
        alone = chat_ids(self.tokenizer, user_message(text, self.system))
        if len(alone) > self.budget:
            raise LmlabError(f"this message is too long: it takes {len(alone)} tokens, and the model's context "
                             f"window holds {self.model.config.max_seq_len} with {self.config.max_new_tokens} "
                             "kept for the reply")
        self.turns.append({"role": "user", "content": text})
        dropped = 0
        while len(self.prompt_ids()) > self.budget:
            del self.turns[0]  # and the replies to it: the conversation starts with a user message
            dropped += 1
            while self.turns[0]["role"] != "user":
                del self.turns[0]
                dropped += 1
        return dropped

    def respond(self) -> Iterator[str]:
        """Stream the assistant's reply to the conversation; it joins the conversation when complete."""
        pieces = []
        for piece in stream(self.model, self.prompt_ids(), self.config, self.tokenizer):
            pieces.append(piece)
            yield piece
        self.turns.append({"role": "assistant", "content": "".join(pieces).strip()})
