"""Live servers on 127.0.0.1 for the serving tests: uvicorn in a thread, on a port the OS picks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import openai
import pytest
import uvicorn

from lmlab.serving import ServerLimits, ServeSettings, build_server, serve_in_thread
from tiny import make_tiny_checkpoint

STARTUP_SECONDS = 120


@dataclass
class LiveServer:
    url: str
    server: uvicorn.Server

    @property
    def state(self):
        return self.server.config.app.state.server

    def client(self, api_key: str = "unused", **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=120, **kwargs)

    def metric(self, sample: str) -> float:
        """The value of one sample of /metrics, named as it is printed (`name{label="..."}`); 0 when absent."""
        for line in httpx.get(self.url + "/metrics").text.splitlines():
            name, _, value = line.rpartition(" ")
            if name == sample:
                return float(value)
        return 0.0


def wait_until(condition, seconds: float = STARTUP_SECONDS, message: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(0.05)


def healthy(url: str, api_key: str | None = None) -> bool:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        return httpx.get(url + "/health", headers=headers).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def running(server: uvicorn.Server, wait: bool = True, api_key: str | None = None) -> Iterator[LiveServer]:
    """Run a uvicorn server in a thread on a free loopback port (once it answers /health unless not `wait`)."""
    with serve_in_thread(server, STARTUP_SECONDS) as url:
        if wait:
            wait_until(lambda: healthy(url, api_key), message="the model to load")
        yield LiveServer(url, server)


@contextmanager
def live_server(model: Path | str, *, embedding_model: str | None = None, max_model_len: int | None = None,
                dtype: str = "fp32", **limits) -> Iterator[LiveServer]:
    """`lmlab serve MODEL` with these settings, running on 127.0.0.1."""
    settings = ServeSettings(model=str(model), embedding_model=embedding_model, max_model_len=max_model_len,
                             dtype=dtype, limits=ServerLimits(**limits), log_level="warning")
    with running(build_server(settings), api_key=limits.get("api_key")) as live:
        yield live


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Llama with a BPE tokenizer and a ChatML template (window 2048)."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("serve") / "tiny", chat=True)


@pytest.fixture(scope="session")
def api_server(tiny_model) -> Iterator[LiveServer]:
    """The server most tests share: 8 slots, 256-token requests, no API key."""
    with live_server(tiny_model, max_model_len=256, slots=8, max_queue=64) as live:
        yield live
