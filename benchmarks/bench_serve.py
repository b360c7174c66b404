"""Serving under load: `lmlab serve` vs llama.cpp's server (`python -m llama_cpp.server`) on the same GGUF.

Both serve the embedded SmolLM2-135M-Instruct (the same Q4_1 GGUF file: lmlab dequantizes it, llama.cpp
runs it quantized) on 127.0.0.1. For 1, 4, 16 and 64 concurrent clients, each client sends a fixed
number of streamed chat completions one after the other (different questions, sampled with a seed per
request), and the script measures for each level:

- time to first token (TTFT): from sending the request to the first chunk with text, p50 and p99;
- latency: from sending the request to `data: [DONE]`, p50 and p99;
- aggregate generated tokens/s: the completion tokens of all the answers (the `usage` chunk, else one
  token per chunk) / the level's wall-clock time;
- errors by HTTP status (or exception), and requests skipped at the time limit.

Then the ratio of aggregate tokens/s, lmlab / llama.cpp, per level (above 1: lmlab serves more). llama.cpp
runs when `llama_cpp.server` is importable (`pip install -e .[bench]`). Everything stays on loopback,
each level is bounded in requests and in time, and the servers are stopped at the end.

    python benchmarks/bench_serve.py [--clients 1,4,16,64] [--requests 4] [--max-tokens 64] [--slots 16]
                                     [--threads 2] [--dtype bf16] [--time-limit 600] [--no-llama-cpp]
                                     [--llama-cpp-batch 512]

lmlab serves in bf16 on a CPU with AMX and in fp32 elsewhere unless `--dtype` says otherwise (as
bench_batch.py); the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx2 as httpx

from bench_batch import fastest_float_dtype
from bench_decode import load_average
from lmlab.hub.resolve import embedded_path

MODEL = "smollm2-135m-instruct"
QUESTIONS = [
    "What is the capital of France?", "Give me three tips for sleeping better.", "Why is the sky blue?",
    "Write a haiku about the sea.", "How do I boil an egg?", "What is a prime number?",
    "Explain photosynthesis to a child.", "Name four planets of the solar system.",
]
STARTUP_SECONDS = 300


@dataclass
class Level:
    """What one concurrency level measured."""

    clients: int
    seconds: float = 0.0
    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: Counter = field(default_factory=Counter)
    skipped: int = 0

    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, path: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with status {process.returncode} before it was ready")
        try:
            if httpx.get(url + path, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server at {url} was not ready after {STARTUP_SECONDS} s")


async def one_request(client: httpx.AsyncClient, url: str, body: dict, level: Level) -> None:
    start = time.perf_counter()
    first = None
    chunks = 0
    usage = None
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                level.errors[str(response.status_code)] += 1
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices", []):
                    if (choice.get("delta") or {}).get("content"):
                        chunks += 1
                        first = first or time.perf_counter()
    except (httpx.HTTPError, json.JSONDecodeError) as err:
        level.errors[type(err).__name__] += 1
        return
    end = time.perf_counter()
    level.latency.append(end - start)
    if first is not None:
        level.ttft.append(first - start)
    level.tokens += usage["completion_tokens"] if usage else chunks


async def run_level(url: str, model: str, clients: int, requests: int, max_tokens: int, time_limit: float) -> Level:
    level = Level(clients)
    deadline = time.monotonic() + time_limit

    async def client_loop(client: httpx.AsyncClient, c: int) -> None:
        for r in range(requests):
            if time.monotonic() > deadline:
                level.skipped += requests - r
                return
            n = c * requests + r
            body = {"model": model, "messages": [{"role": "user", "content": QUESTIONS[n % len(QUESTIONS)]}],
                    "max_tokens": max_tokens, "temperature": 0.7, "seed": n, "stream": True,
                    "stream_options": {"include_usage": True}}
            await one_request(client, url, body, level)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=time_limit, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(client_loop(client, c) for c in range(clients))), time_limit + 60)
        level.seconds = time.perf_counter() - start
    return level


def report(name: str, level: Level, requests: int) -> None:
    ok = len(level.latency)
    errors = ", ".join(f"{status}: {n}" for status, n in sorted(level.errors.items())) or "none"
    print(f"{name:<10} {level.clients:>7} {ok:>4}/{level.clients * requests:<4} "
          f"{percentile(level.ttft, 50):>8.3f} {percentile(level.ttft, 99):>8.3f} "
          f"{percentile(level.latency, 50):>8.3f} {percentile(level.latency, 99):>8.3f} "
          f"{level.tokens_per_second():>8.1f}   errors {errors}" + (f", skipped {level.skipped}" if level.skipped else ""))


def measure(name: str, command: list[str], health: str, args: argparse.Namespace) -> dict[int, Level]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(command + ["--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    levels = {}
    try:
        wait_healthy(url, process, health)
        for clients in args.clients:
            levels[clients] = asyncio.run(run_level(url, MODEL, clients, args.requests, args.max_tokens,
                                                    args.time_limit))
            report(name, levels[clients], args.requests)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return levels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,4,16,64", help="concurrency levels, comma-separated")
    parser.add_argument("--requests", type=int, default=4, help="requests per client at each level")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each request")
    parser.add_argument("--slots", type=int, default=16, help="lmlab's engine slots (requests decoded together)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads of each server")
    parser.add_argument("--dtype", default=fastest_float_dtype(), choices=("fp32", "bf16", "int8", "int4"),
                        help="lmlab's weights (default: bf16 on a CPU with AMX, else fp32)")
    parser.add_argument("--time-limit", type=float, default=600, help="seconds per level before requests are skipped")
    parser.add_argument("--no-llama-cpp", action="store_true", help="measure lmlab alone")
    parser.add_argument("--llama-cpp-batch", type=int, default=512,
                        help="llama.cpp's n_batch, tokens per prompt-processing step (default 512, its own; a build "
                             "whose batched kernels crash needs 1)")
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    most = max(args.clients)
    gguf = embedded_path(MODEL)

    print(f"load average before: {load_average()}; lmlab {args.dtype}, {args.slots} slots, {args.threads} threads")
    print(f"{'server':<10} {'clients':>7} {'ok':>9} {'TTFT p50':>8} {'TTFT p99':>8} {'lat p50':>8} {'lat p99':>8} "
          f"{'tok/s':>8}   (seconds; {args.requests} requests per client, max_tokens {args.max_tokens})")
    lmlab_levels = measure("lmlab", [sys.executable, "-m", "lmlab.cli.main", "--threads", str(args.threads), "serve",
                                     MODEL, "--dtype", args.dtype, "--slots", str(args.slots),
                                     "--max-queue", str(most * 2),
                                     "--max-model-len", "1024", "--shutdown-timeout", "5"], "/health", args)
    if args.no_llama_cpp:
        print(f"load average after: {load_average()}")
        return
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("sse_starlette") is None:
        print("llama.cpp: not measured (pip install -e .[bench] installs llama-cpp-python[server])")
        return
    llama_levels = measure("llama.cpp", [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
                                         "--model_alias", MODEL, "--host", "127.0.0.1", "--n_ctx", "2048",
                                         "--n_threads", str(args.threads), "--n_batch", str(args.llama_cpp_batch),
                                         "--interrupt_requests", "False"],  # queue, as lmlab does
                           "/v1/models", args)
    print("\naggregate tokens/s, lmlab / llama.cpp:")
    for clients in args.clients:
        ours, theirs = lmlab_levels[clients].tokens_per_second(), llama_levels[clients].tokens_per_second()
        ratio = ours / theirs if theirs else float("nan")
        print(f"  {clients:>3} clients: {ours:8.1f} / {theirs:8.1f} = {ratio:5.2f}x"
              + (" (target >= 2.0)" if clients == 16 else ""))
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
