"""Faults and load: a client that leaves, a full queue, SIGTERM with streams in flight."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx

import lmlab

from .conftest import healthy, live_server, wait_until

CHAT = {"messages": [{"role": "user", "content": "Tell me a long story."}]}


def stream_chat(url: str, body: dict, started: threading.Event | None = None) -> list[dict]:
    """Every chunk of a streamed chat completion; `started` is set at the first content chunk."""
    chunks = []
    with httpx.stream("POST", url + "/v1/chat/completions", json={**CHAT, **body, "stream": True},
                      timeout=120) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                chunks.append({"done": True})
                continue
            chunks.append(json.loads(line[6:]))
            if started is not None and chunks[-1]["choices"] and chunks[-1]["choices"][0]["delta"].get("content"):
                started.set()
    return chunks


def recording_handles(engine) -> list:
    """Keep each RequestHandle the engine hands out, to see how its generation ended."""
    handles, submit = [], engine.submit

    def record(request):
        handles.append(submit(request))
        return handles[-1]

    engine.submit = record
    return handles


def test_a_client_that_disconnects_mid_stream_frees_its_slot(tiny_model):
    with live_server(tiny_model, slots=1, max_queue=4) as live:
        handles = recording_handles(live.state.backend.engine)
        with httpx.stream("POST", live.url + "/v1/chat/completions", timeout=60,
                          json={**CHAT, "max_tokens": 1500, "temperature": 0, "stream": True}) as response:
            chunks = (line for line in response.iter_lines() if line.startswith("data: "))
            for _ in range(3):
                next(chunks)
        # the connection is closed: the generation is cancelled and its one slot taken by the next request
        completion = handles[0].result(timeout=60)
        assert completion.finish_reason == "cancelled" and len(completion.tokens) < 1500
        wait_until(lambda: live.metric("lmlab_cancelled_requests_total") == 1, 30, "the cancellation to count")
        answer = httpx.post(live.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 5}, timeout=60).json()
        assert answer["usage"]["completion_tokens"] <= 5
        assert live.metric("lmlab_running_requests") == 0


def test_a_full_queue_answers_429_with_retry_after_and_loses_no_request(tiny_model):
    with live_server(tiny_model, slots=1, max_queue=2) as live:
        handles = recording_handles(live.state.backend.engine)
        holders = [threading.Thread(target=stream_chat, args=(live.url, {"max_tokens": 400, "temperature": 0}))
                   for i in range(3)]
        for holder in holders:
            holder.start()
        wait_until(lambda: len(handles) == 3, 30, "three requests to be admitted (1 running, 2 queued)")

        def ask(i: int) -> httpx.Response:
            return httpx.post(live.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 3, "seed": i},
                              timeout=120)

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(ask, range(6)))
        for holder in holders:
            holder.join(120)
        statuses = [a.status_code for a in answers]
        assert set(statuses) <= {200, 429} and 429 in statuses
        for refused in (a for a in answers if a.status_code == 429):
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.json()["error"]["type"] == "rate_limit_error"
        accepted = [a.json() for a in answers if a.status_code == 200]
        assert len({a["id"] for a in accepted}) == len(accepted)  # each answered once
        assert len(handles) == 3 + len(accepted)  # nothing refused reached the engine, nothing accepted was lost
        assert all(h.result(timeout=60).finish_reason in ("length", "eos", "stop") for h in handles)
        assert live.metric('lmlab_requests_total{endpoint="/v1/chat/completions",status="429"}') == \
               statuses.count(429)
        assert httpx.post(live.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 3}).status_code == 200


def lmlab_serve(log: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`lmlab serve ARGS` in a process of its own, on a free loopback port, its output into `log` (a pipe
    could fill up and block the server); the process and its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(lmlab.__file__).parents[1])}
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "lmlab.cli.main", "serve", *args, "--port", str(port)],
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}"


def test_a_model_that_fails_to_load_ends_the_server_with_one_line(tiny_model, tmp_path):
    # the tiny model's 172-wide layers do not pack into int4, which only loading finds out
    process, _ = lmlab_serve(tmp_path / "log", str(tiny_model), "--dtype", "int4")
    assert process.wait(timeout=120) == 1
    output = (tmp_path / "log").read_text()
    assert output.strip().splitlines()[-1].startswith("lmlab: error: ") and "int4" in output
    assert "Traceback" not in output


def test_sigterm_finishes_4_streams_in_flight_then_exits_0(tiny_model, tmp_path):
    server, url = lmlab_serve(tmp_path / "log", str(tiny_model), "--slots", "4", "--max-model-len", "512", "--shutdown-timeout", "120")
    try:
        wait_until(lambda: healthy(url), message="the server to load")
        started = [threading.Event() for _ in range(4)]
        results: list[list[dict]] = [[] for _ in range(4)]

        def run(i: int) -> None:
            results[i] = stream_chat(url, {"max_tokens": 120, "seed": i, "temperature": 1.0}, started[i])

        streams = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for stream in streams:
            stream.start()
        for event in started:
            assert event.wait(60)
        server.send_signal(signal.SIGTERM)
        for stream in streams:
            stream.join(120)
        assert server.wait(timeout=120) == 0, (tmp_path / "log").read_text()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    for chunks in results:
        assert chunks[-1] == {"done": True}
        reasons = [c["choices"][0]["finish_reason"] for c in chunks[:-1] if c["choices"]]
        assert reasons[-1] in ("length", "stop")
