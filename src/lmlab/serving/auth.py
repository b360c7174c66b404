"""API keys: every request must carry `Authorization: Bearer KEY`, compared in constant time.

`hmac.compare_digest` takes as long whatever prefix of the key a guess gets right, so response
times tell an attacker nothing about the key (a timing side channel; Kocher 1996). The playground's
static files are public, as they hold no data: the page asks for the key and sends it with every call.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from lmlab.serving.errors import APIError


def is_public(path: str) -> bool:
    """The playground page and its files, which any browser may load."""
    return path == "/" or path.startswith("/static/")


def key_matches(header: str | None, key: str) -> bool:
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode())


class APIKeyMiddleware:
    """Answer 401 (OpenAI's error object) to a request without the right key."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.key = key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not is_public(scope["path"]):
            headers = dict(scope["headers"])
            header = headers.get(b"authorization", b"").decode("latin-1") or None
            if not key_matches(header, self.key):
                message = ("this server needs an API key: send it as 'Authorization: Bearer KEY'" if header is None
                           else "the API key is wrong")
                error = APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)
