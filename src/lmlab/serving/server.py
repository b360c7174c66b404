"""`serve`: load a model behind the continuous-batching engine and answer HTTP on uvicorn.

The server listens at once and loads the model in the background (/health says 503 until it is
ready). SIGTERM or Ctrl-C starts a graceful shutdown: the listening socket closes, new requests on
open connections get 503, the requests in flight run to their end (up to `shutdown_timeout`
seconds, after which they are cancelled), the engine stops, and the process exits 0.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import uvicorn

from lmlab.errors import LmlabError
from lmlab.generation.engine import Engine
from lmlab.hub.resolve import DEFAULT_MODEL, load_model, resolve_config
from lmlab.serving.app import Backend, ServerLimits, create_app
from lmlab.quantization.weight_format import WeightFormat
from lmlab.serving.embeddings import SentenceEncoder


@dataclass
class ServeSettings:
    """What `lmlab serve` runs: which models, where, and within which limits."""

    model: str = DEFAULT_MODEL
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: str = "fp32"  # fp32, bf16, or int8 / int4 (quantized on load)
    group_size: int | None = None  # int4's group
    max_model_len: int | None = None
    prefill_chunk: int = 256
    embedding_model: str | None = None
    limits: ServerLimits = field(default_factory=ServerLimits)
    log_level: str = "info"


def load_backend(settings: ServeSettings) -> Backend:
    """Load the language model into an engine (and the sentence encoder, if asked for)."""
    loaded = load_model(settings.model, dtype=settings.dtype, group_size=settings.group_size, fuse=True)
    engine = Engine(loaded.model, loaded.tokenizer, slots=settings.limits.slots, max_len=settings.max_model_len,
                    prefill_chunk=settings.prefill_chunk)
    encoder = SentenceEncoder(load_model(settings.embedding_model)) if settings.embedding_model else None
    return Backend(engine, loaded.tokenizer, settings.model, encoder)


def check_settings(settings: ServeSettings) -> None:
    """Fail before listening on what can be known without loading weights."""
    WeightFormat.parse(settings.dtype, settings.group_size)
    limits = settings.limits
    for name, value, least in (("--slots", limits.slots, 1), ("--max-queue", limits.max_queue, 0),
                               ("--max-body-bytes", limits.max_body_bytes, 1024)):
        if value < least:
            raise LmlabError(f"{name} must be at least {least}, not {value}")
    if limits.shutdown_timeout < 0:
        raise LmlabError(f"--shutdown-timeout must be >= 0 seconds, not {limits.shutdown_timeout}")
    config = resolve_config(settings.model)
    if config.arch != "decoder" or config.head != "lm":
        raise LmlabError(f"{settings.model!r} is an {config.arch} without a language-modelling head, so it cannot "
                         "write text: serve a decoder-only model (give an encoder with --embedding-model)")
    if settings.max_model_len is not None and not 2 <= settings.max_model_len <= config.max_seq_len:
        raise LmlabError(f"--max-model-len must be between 2 and the model's context window "
                         f"({config.max_seq_len}), not {settings.max_model_len}")
    if settings.embedding_model is not None:
        embedding = resolve_config(settings.embedding_model)
        if embedding.arch != "encoder":
            raise LmlabError(f"--embedding-model needs an encoder-only model such as minilm-l6; "
                             f"{settings.embedding_model!r} is a {embedding.arch}")


class GracefulServer(uvicorn.Server):
    """uvicorn's server, told to drain on SIGTERM / SIGINT and to exit normally afterwards (uvicorn
    itself re-raises the signal once shut down, which would end the process with status 143)."""

    def __init__(self, config: uvicorn.Config, on_signal) -> None:
        super().__init__(config)
        self.on_signal = on_signal

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self._drain) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def _drain(self, sig: int, frame) -> None:
        self.on_signal()
        self.handle_exit(sig, frame)


def build_server(settings: ServeSettings) -> GracefulServer:
    """The uvicorn server for `settings` (not yet running)."""
    check_settings(settings)
    app = create_app(settings.limits, lambda: load_backend(settings))
    state = app.state.server
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            timeout_graceful_shutdown=settings.limits.shutdown_timeout, lifespan="on")
    server = GracefulServer(config, on_signal=lambda: setattr(state, "draining", True))

    def stop(err: LmlabError) -> None:
        server.should_exit = True

    state.on_load_failure = stop
    return server


def serve(settings: ServeSettings) -> None:
    """Serve until SIGTERM or Ctrl-C, then drain and return; a model that fails to load is an LmlabError."""
    server = build_server(settings)
    server.run()
    error = server.config.app.state.server.load_error
    if error is not None:
        raise error


@contextlib.contextmanager
def serve_in_thread(server: uvicorn.Server, timeout: float = 120.0) -> Iterator[str]:
    """Run a built server in a background thread on a free 127.0.0.1 port (tests, scripts, notebooks), and
    give its URL once it listens (the model may still be loading: /health says when it is ready); the server
    stops on leaving."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise LmlabError(f"the server did not start listening within {timeout:g} s")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()
