"""Serving throughput: lmlab's continuous-batching engine with 1, 4, 16 and 32 slots vs llama.cpp one
request after another.

32 requests (seeded) with prompt lengths spread uniformly over 50-500 tokens arrive at random times
(a Poisson process, `--rate` requests per second); each asks for `--new-tokens` greedy tokens, with
the end of sequence switched off so every request writes all of them. lmlab runs the embedded
SmolLM2-135M-Instruct through `Engine` (a background thread; requests are submitted as they arrive);
llama.cpp (`llama-cpp-python`, the optional `bench` extra, on the same GGUF file) serves the same
requests in arrival order, one at a time, each starting when it has arrived and the previous one is
done. For each it prints the aggregate decode throughput, all new tokens / (time from the first
arrival to the last completion), the mean time to first token and the mean request latency, then the
ratio lmlab / llama.cpp at 16 slots.

    python benchmarks/bench_batch.py [--requests 32] [--new-tokens 128] [--rate 4] [--slots 1,4,16,32]
                                     [--threads 2] [--dtype bf16|fp32|int8|int4] [--seed 0]

The dtype defaults to bf16 on a CPU with AMX (its prompt processing runs on the matrix unit, ~2.4x fp32's,
and a decode step reads half the bytes) and to fp32 elsewhere (bf16 is emulated there, and slow); the
printed header names the one measured. llama.cpp runs the GGUF's own Q4_1 weights either way.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import threading
import time
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from bench_decode import MODEL, TEXT, TORCH_DTYPES, LlamaCpp, cpu_flags, load_average
from lmlab.generation import GenerationConfig
from lmlab.generation.engine import Engine, EngineRequest
from lmlab.hub.resolve import load_model


@dataclass
class Workload:
    prompts: list[list[int]]
    arrivals: list[float]  # seconds after the start
    new_tokens: int


@dataclass
class Served:
    """What a run measured: per request, when its first token came and when it finished (seconds after
    the start), and how many tokens it wrote."""

    first: list[float]
    done: list[float]
    tokens: list[int]

    def report(self, name: str, workload: Workload) -> float:
        start = min(workload.arrivals)
        throughput = sum(self.tokens) / (max(self.done) - start)
        ttft = statistics.mean(f - a for f, a in zip(self.first, workload.arrivals))
        latency = statistics.mean(d - a for d, a in zip(self.done, workload.arrivals))
        print(f"{name:>17}: {throughput:7.1f} tok/s aggregate   time to first token {ttft:6.2f} s   "
              f"latency {latency:6.2f} s   ({sum(self.tokens)} tokens in {max(self.done) - start:.1f} s)")
        return throughput


def fastest_float_dtype() -> str:
    """bf16 where the CPU multiplies bf16 matrices in hardware (AMX), else fp32."""
    return "bf16" if torch.cpu.get_capabilities().get("amx_bf16") else "fp32"


def make_workload(tokenizer, n: int, new_tokens: int, rate: float, seed: int, lengths: tuple[int, int]) -> Workload:
    rng = random.Random(seed)
    text = tokenizer.encode(TEXT * 4)
    prompts = []
    for _ in range(n):
        length = rng.randint(*lengths)
        offset = rng.randrange(len(text) - length)
        prompts.append(text[offset : offset + length])
    arrivals, t = [], 0.0
    for _ in range(n):
        arrivals.append(t)
        t += rng.expovariate(rate)
    return Workload(prompts, arrivals, new_tokens)


def serve_lmlab(model, tokenizer, workload: Workload, slots: int, prefill_chunk: int) -> Served:
    """The engine steps in this thread while another submits the requests as they arrive.

    The steps run where the model was loaded on purpose: libgomp (PyTorch's OpenMP) spins its idle
    workers only while it manages no more threads than there are CPUs, so a second thread with its own
    OpenMP team (the engine's `start()` thread, next to the loading thread's) makes every parallel
    operation wake a sleeping worker: 1.5-2x slower steps on 2 cores here. `lmlab serve` loads the
    model in a thread that ends before its engine thread starts, so it has one team too.
    """
    longest = max(map(len, workload.prompts)) + workload.new_tokens
    engine = Engine(model, tokenizer, slots=slots, max_len=longest, prefill_chunk=prefill_chunk)
    n = len(workload.prompts)
    first, done, counts = [0.0] * n, [0.0] * n, [0] * n
    start = time.perf_counter()

    def on_event(i: int):
        def record(event) -> None:
            now = time.perf_counter() - start
            counts[i] += event.token_id >= 0
            if counts[i] == 1 and event.token_id >= 0:
                first[i] = now
            if event.finish_reason is not None:
                done[i] = now
        return record

    def arrive() -> None:
        config = GenerationConfig(max_new_tokens=workload.new_tokens)
        for i, (prompt, arrival) in enumerate(zip(workload.prompts, workload.arrivals)):
            time.sleep(max(0.0, arrival - (time.perf_counter() - start)))
            engine.submit(EngineRequest(prompt, config, on_event=on_event(i)))

    arrivals = threading.Thread(target=arrive, name="arrivals")
    arrivals.start()
    while engine.step() or arrivals.is_alive():
        if not engine.running and not engine.queued:
            time.sleep(0.001)  # nothing to run until the next arrival
    arrivals.join()
    engine.run_until_idle()  # a request submitted just after the last idle step
    return Served(first, done, counts)


def llama_cpp_serve(llm, prompts: list[list[int]], arrivals: list[float], new_tokens: int) -> Served:
    """In llama.cpp's process: serve the requests in arrival order, one at a time."""
    n = len(prompts)
    first, done, counts = [0.0] * n, [0.0] * n, [0] * n
    start = time.perf_counter()
    for i, (prompt, arrival) in enumerate(zip(prompts, arrivals)):
        time.sleep(max(0.0, arrival - (time.perf_counter() - start)))
        llm.reset()
        for _ in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
            counts[i] += 1
            if counts[i] == 1:
                first[i] = time.perf_counter() - start
            if counts[i] == new_tokens:
                break
        done[i] = time.perf_counter() - start
    return Served(first, done, counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rate", type=float, default=4.0, help="mean arrivals per second")
    parser.add_argument("--min-prompt", type=int, default=50)
    parser.add_argument("--max-prompt", type=int, default=500)
    parser.add_argument("--slots", default="1,4,16,32")
    parser.add_argument("--prefill-chunk", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default=fastest_float_dtype(), choices=("fp32", "bf16", "int8", "int4"),
                        help="lmlab's weights (default: bf16 on a CPU with AMX, else fp32)")
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--no-llama-cpp", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average before: {load_average()}")
    print(f"CPU flags: {cpu_flags()}")
    if args.dtype in TORCH_DTYPES:
        loaded = load_model(MODEL, dtype=TORCH_DTYPES[args.dtype], fuse=True)
    else:
        loaded = load_model(MODEL, dtype=args.dtype, group_size=args.group_size if args.dtype == "int4" else None,
                            fuse=True)
    loaded.model.config.eos_token_id = None
    workload = make_workload(loaded.tokenizer, args.requests, args.new_tokens, args.rate, args.seed,
                             (args.min_prompt, args.max_prompt))
    lengths = sorted(map(len, workload.prompts))
    print(f"SmolLM2-135M-Instruct {args.dtype}, {args.requests} requests, prompts {lengths[0]}-{lengths[-1]} tokens "
          f"(median {lengths[len(lengths) // 2]}), {args.new_tokens} greedy new tokens each, arrivals over "
          f"{workload.arrivals[-1]:.1f} s, {args.threads} threads, prefill chunk {args.prefill_chunk}")
    serve_lmlab(loaded.model, loaded.tokenizer, make_workload(loaded.tokenizer, 2, 2, 100.0, 1, (8, 16)), 2,
                args.prefill_chunk)  # warm-up
    throughput = {}
    for slots in (int(s) for s in args.slots.split(",")):
        served = serve_lmlab(loaded.model, loaded.tokenizer, workload, slots, args.prefill_chunk)
        throughput[slots] = served.report(f"lmlab {slots} slots", workload)
    reference = None
    if not args.no_llama_cpp:
        try:
            llama = LlamaCpp(args.threads, max(map(len, workload.prompts)) + args.new_tokens + 16)
            served = llama.call(llama_cpp_serve, workload.prompts, workload.arrivals, args.new_tokens)
            llama.close()
            reference = served.report("llama.cpp serial", workload)
        except ImportError as error:
            print(f"skipped llama.cpp: {error} (pip install 'lmlab[bench]')")
        except RuntimeError as error:
            print(f"skipped llama.cpp: {error}")
    if reference is not None:
        for slots, value in throughput.items():
            target = " (target >= 3.0)" if slots == 16 else ""
            print(f"aggregate tok/s lmlab {slots} slots / llama.cpp serial: {value / reference:.2f}{target}")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
