"""From tokens to final text: incremental detokenization, stop strings, and what a prompt produced.

Streaming decodes a sequence's tokens as they come, but a token's text is not always final when
it arrives: a byte-level BPE token may hold half of a UTF-8 character (decoded as U+FFFD until the
rest comes), and the text may end with the beginning of a stop string, which is cut if the string
completes. `IncrementalText` holds such text back and releases it once it cannot change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from lmlab.tokenizers.base import TokenizerProtocol


@dataclass
class Completion:
    """What one prompt produced.

    tokens: the new token ids, ending with the end-of-sequence token when the model wrote one.
    text: the new tokens as text, without special tokens, cut before a stop string ("" without a tokenizer).
    finish_reason: "eos" (end-of-sequence token), "stop" (a stop string), "length" (max_new_tokens or
    the context window reached).
    """

    prompt_ids: list[int]
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None


def first_stop(text: str, stop: Sequence[str], start: int = 0) -> int | None:
    """Where the first stop string begins in text[start:], or None."""
    return min((i for i in (text.find(s, start) for s in stop) if i >= 0), default=None)


class IncrementalText:
    """Detokenize one row incrementally, hold back text that may still change, and watch for stop strings."""

    def __init__(self, tokenizer: TokenizerProtocol, stop: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.tokens: list[int] = []
        self.text = ""
        self.emitted = 0

    def add(self, token: int, final: bool) -> tuple[str, bool]:
        """Take the row's next token; return the text that became final and whether a stop string ended it."""
        self.tokens.append(token)
        if self.tokenizer is None:
            return "", False
        text = self.text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        cut = first_stop(text, self.stop, self.emitted)
        if cut is not None:
            return self._emit(text, cut), True
        return self._emit(text, len(text) if final else self._safe_end(text)), False

    def flush(self) -> str:
        """The text held back so far, final now that no token will follow (a cancelled sequence)."""
        return self._emit(self.text, len(self.text))

    def _emit(self, text: str, end: int) -> str:
        piece = text[self.emitted:end]
        self.emitted = max(self.emitted, end)
        return piece

    def _safe_end(self, text: str) -> int:
        """Where the text is final: before an unfinished UTF-8 character (decoded as U+FFFD) and
        before a tail that could grow into a stop string."""
        end = len(text.rstrip("\ufffd"))
        held = max((n for s in self.stop for n in range(1, len(s)) if text[:end].endswith(s[:n])), default=0)
        return max(end - held, self.emitted)
