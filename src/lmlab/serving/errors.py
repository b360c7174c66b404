"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the HTTP status.

OpenAI's API (and the servers that copy it: vLLM, llama.cpp's server) answers every failure with
this object, so a client library raises the right exception class from the status alone:
400 bad request, 401 authentication, 404 not found, 413 too large, 429 rate limit, 503 unavailable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.responses import JSONResponse

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}


@dataclass
class APIError(Exception):
    """A failure the client hears about: the status, one readable line, the request field at fault."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict:
        kind = ERROR_TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)
