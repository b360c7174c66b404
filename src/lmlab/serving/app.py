"""The HTTP application: OpenAI's endpoints, health, metrics and the playground page, on FastAPI.

Routes: POST /v1/completions, /v1/chat/completions, /v1/embeddings; GET /v1/models, /health
(503 while the model loads or the server drains), /metrics, /playground/defaults, and / (the
playground). The model loads in a background thread once the server listens, so /health can
answer while it does. Around the routes, from the outside in: CORS (only with allowed origins),
the API key, and the request counter.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib.resources import files

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.staticfiles import StaticFiles

from lmlab.errors import LmlabError
from lmlab.generation.engine import Engine
from lmlab.generation.sampling import GenerationConfig
from lmlab.serving.admission import Admission
from lmlab.serving.auth import APIKeyMiddleware
from lmlab.serving.embeddings import SentenceEncoder
from lmlab.serving.errors import APIError, bad_request
from lmlab.serving.generation import Choice, Job, Responder, chat_job, completion_job
from lmlab.serving.metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from lmlab.serving.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, parse_request
from lmlab.serving.streaming import RequestGroup
from lmlab.tokenizers.base import TokenizerProtocol

STATIC = files("lmlab.serving") / "static"
ENDPOINTS = frozenset({"/", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions",
                       "/v1/embeddings", "/playground/defaults"})
LOADING_RETRY_SECONDS = 5


@dataclass
class ServerLimits:
    """The settings the application enforces."""

    slots: int = 8
    max_queue: int = 256
    max_body_bytes: int = 1_000_000
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    shutdown_timeout: float = 30.0


@dataclass
class Backend:
    """What the server runs: the engine over a language model, and optionally a sentence encoder."""

    engine: Engine
    tokenizer: TokenizerProtocol | None
    model_name: str
    encoder: SentenceEncoder | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def window(self) -> int:
        """Tokens of prompt and answer together that a request may use (the engine's slot length)."""
        return self.engine.max_len


class ServerState:
    """The application's state: loading, ready, or draining; the admission count and the metrics."""

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self.admission = Admission(limits.slots, limits.max_queue)
        self.metrics = Metrics()
        self.backend: Backend | None = None
        self.load_error: LmlabError | None = None
        self.draining = False
        self.on_load_failure: Callable[[LmlabError], None] = lambda err: None

    def start_loading(self, load: Callable[[], Backend]) -> None:
        def run() -> None:
            try:
                backend = load()
            except LmlabError as err:
                self.load_error = err
                self.on_load_failure(err)
                return
            backend.engine.start()
            self.metrics.watch(backend.engine)
            self.backend = backend

        threading.Thread(target=run, name="lmlab-load", daemon=True).start()

    def ready(self) -> Backend:
        """The backend, or 503 while loading or draining."""
        if self.draining:
            raise APIError(503, "the server is shutting down", code="shutting_down")
        if self.backend is None:
            raise APIError(503, "the model is still loading; retry shortly", code="loading",
                           headers={"Retry-After": str(LOADING_RETRY_SECONDS)})
        return self.backend

    def shutdown(self) -> None:
        if self.backend is not None:
            self.backend.engine.shutdown(drain=True, timeout=self.limits.shutdown_timeout)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it is known to pass `limit` bytes."""
    too_large = APIError(413, f"the request body is larger than this server's limit of {limit} bytes",
                         code="request_too_large")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def check_model(asked: str | None, served: str, param: str = "model") -> None:
    if asked is not None and asked != served:
        raise APIError(404, f"the model {asked!r} does not exist here; this server serves {served!r}", param,
                       "model_not_found")


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the ASGI server reports http.disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class EventStream(StreamingResponse):
    """Server-sent events that run `on_close` however the stream ends (finished, or the client gone)."""

    def __init__(self, content, on_close: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def create_app(limits: ServerLimits, load: Callable[[], Backend]) -> FastAPI:
    """The application; `load` builds the backend (in a thread, after the server starts listening)."""
    state = ServerState(limits)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.start_loading(load)
        yield
        await asyncio.to_thread(state.shutdown)

    app = FastAPI(title="lmlab", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state
    metrics = state.metrics

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> Response:
        return err.response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> Response:
        message = "no such route: " + request.url.path if err.status_code == 404 else str(err.detail)
        return APIError(err.status_code, message, code="not_found" if err.status_code == 404 else None).response()

    @app.exception_handler(Exception)
    async def server_error(request: Request, err: Exception) -> Response:
        return APIError(500, f"internal error: {type(err).__name__}: {err}").response()

    async def run(job: Job, backend: Backend, request: Request, stream: bool) -> Response:
        state.admission.admit(len(job.requests))
        start = time.perf_counter()
        group = RequestGroup(backend.engine, job.requests, on_done=state.admission.release)
        responder = Responder(job, backend.tokenizer)
        choices = [Choice() for _ in job.requests]

        async def observed():
            first = True
            async for index, event in group:
                if first and event.token_id >= 0:
                    metrics.time_to_first_token.observe(time.perf_counter() - start)
                    first = False
                yield index, event
            metrics.latency.observe(time.perf_counter() - start)
            metrics.prompt_tokens.inc(sum(len(p) for p in job.prompts))
            metrics.generated_tokens.inc(sum(c.tokens for c in choices))

        def on_close() -> None:
            if not group.finished:
                group.cancel()
                metrics.cancelled.inc()

        if stream:
            return EventStream(responder.stream(observed(), choices), on_close)

        async def collect() -> None:
            async for index, event in observed():
                choices[index].add(event)

        done, gone = asyncio.ensure_future(collect()), asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            finished = done.done()
            if not finished:
                done.cancel()
            on_close()
        if not finished:
            return Response(status_code=499)  # nobody to answer: the client has gone
        done.result()  # the engine's failure, if any, as a 500
        return JSONResponse(responder.response(choices))

    async def generate(request: Request, schema, make_job) -> Response:
        backend = state.ready()
        body = parse_request(await read_body(request, limits.max_body_bytes), schema)
        check_model(body.model, backend.model_name)
        job = make_job(body, backend.tokenizer, backend.window, backend.model_name)
        return await run(job, backend, request, body.stream)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generate(request, CompletionRequest, completion_job)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await generate(request, ChatCompletionRequest, chat_job)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        backend = state.ready()
        body = parse_request(await read_body(request, limits.max_body_bytes), EmbeddingRequest)
        encoder = backend.encoder
        if encoder is None:
            raise APIError(404, "this server has no embedding model: start it with --embedding-model "
                                "(for example minilm-l6)", "model", "model_not_found")
        check_model(body.model, encoder.name)
        if body.dimensions is not None and body.dimensions != encoder.dimensions:
            raise bad_request(f"{encoder.name} gives {encoder.dimensions}-dimensional embeddings; it cannot shorten "
                              f"them to {body.dimensions}", "dimensions")
        rows = []
        for i, item in enumerate(body.inputs()):
            row = encoder.token_ids(item) if isinstance(item, str) else item
            if len(row) > encoder.max_tokens:
                raise bad_request(f"input {i} is {len(row)} tokens long, but {encoder.name} reads at most "
                                  f"{encoder.max_tokens} tokens", "input", "context_length_exceeded")
            if not row or not all(0 <= t < encoder.model.config.vocab_size for t in row):
                raise bad_request(f"input {i} must be text or token ids of {encoder.name}'s vocabulary", "input")
            rows.append(row)
        vectors = await asyncio.to_thread(encoder.encode, rows)
        data = []
        for i, vector in enumerate(vectors):
            value = (base64.b64encode(vector.numpy().astype("<f4").tobytes()).decode()
                     if body.encoding_format == "base64" else vector.tolist())
            data.append({"object": "embedding", "index": i, "embedding": value})
        tokens = sum(len(r) for r in rows)
        return JSONResponse({"object": "list", "data": data, "model": encoder.name,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    @app.get("/v1/models")
    async def models() -> Response:
        backend = state.ready()
        names = [backend.model_name] + ([backend.encoder.name] if backend.encoder else [])
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "created": backend.created, "owned_by": "lmlab"} for name in names]})

    @app.get("/health")
    async def health() -> Response:
        if state.draining:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        if state.load_error is not None:
            return JSONResponse({"status": "failed", "error": str(state.load_error)}, status_code=503)
        if state.backend is None:
            return JSONResponse({"status": "loading"}, status_code=503,
                                headers={"Retry-After": str(LOADING_RETRY_SECONDS)})
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/playground/defaults")
    async def playground_defaults() -> Response:
        backend = state.ready()
        defaults = GenerationConfig()
        return JSONResponse({
            "model": backend.model_name, "chat": getattr(backend.tokenizer, "chat_template", None) is not None,
            "context_window": backend.window, "max_tokens": defaults.max_new_tokens,
            "temperature": defaults.temperature, "top_k": defaults.top_k, "top_p": defaults.top_p})

    @app.get("/")
    async def playground() -> Response:
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.add_middleware(MetricsMiddleware, metrics=metrics, endpoints=ENDPOINTS)
    if limits.api_key:
        app.add_middleware(APIKeyMiddleware, key=limits.api_key)
    if limits.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(limits.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    return app
