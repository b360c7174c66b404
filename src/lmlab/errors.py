"""The one exception type a user sees.

Anything raised as `LmlabError` is a problem with the user's input (a missing
file, an unknown model, a bad option). The CLI prints its message as one line
on stderr and exits non-zero; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LmlabError(Exception):
    """A user-facing error: its message is the whole story, printed on one line."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean: a, b?)' for the choices closest to `name`, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" (did you mean: {', '.join(close)}?)" if close else ""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for a one-line LmlabError."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
