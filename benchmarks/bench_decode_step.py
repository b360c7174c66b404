"""One decode step of the embedded SmolLM2-135M, looked at closely: operator calls and milliseconds per token.

For each dtype the model is loaded as bench_decode.py loads it (`load_model(..., fuse=True)`), a
~300-token prompt is prefilled into a one-slot cache, and then:

- one decode step runs under torch.profiler, through the module path (`model(ids, cache=...)`) and
  through the flat loop the engine uses (`lmlab.models.decode_step.DecodeStep`): the number of
  operator calls each makes (all of them, and the top-level ones the Python code issues), and the
  operators that take the most time in the loop;
- `--tokens` greedy decode steps are timed, best of `--repeats`: ms per token through the module path
  and through the loop (forward + argmax), and through `stream_generate` (what bench_decode.py times).

The load average is printed with the timings: on a busy machine they are provisional.

    python benchmarks/bench_decode_step.py [--dtypes fp32,bf16,int8,int4] [--tokens 64] [--repeats 3]
                                           [--threads 2] [--top 12]
"""

from __future__ import annotations

import argparse
import math
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch.profiler import ProfilerActivity, profile

from lmlab.generation import GenerationConfig, stream_generate
from lmlab.hub.resolve import load_model
from lmlab.models.decode_step import DecodeStep

from bench_decode import prompt_ids  # the same ~300-token prompt

MODEL = "smollm2-135m-instruct"


def load(dtype: str):
    loaded = load_model(MODEL, dtype={"fp32": torch.float32, "bf16": torch.bfloat16}.get(dtype, dtype), fuse=True)
    loaded.model.config.eos_token_id = None
    return loaded


@torch.inference_mode()
def prefill(model, prompt: list[int], max_len: int):
    cache = model.new_slot_cache(1, max_len)
    cache.prefill(0, len(prompt))
    logits = model(torch.tensor([prompt]), cache=cache, last_logits_only=True).logits[:, -1]
    return cache, logits.argmax(-1)


@torch.inference_mode()
def decode_step(model, cache, token: torch.Tensor, loop: DecodeStep | None = None) -> torch.Tensor:
    """One greedy decode step through the module path, or through `loop` when given."""
    cache.decode(1, [True])
    logits = loop(token[:, None], cache) if loop is not None else model(token[:, None], cache=cache).logits[:, -1]
    return logits.argmax(-1)


def op_counts(model, prompt: list[int], top: int, loop: DecodeStep | None) -> tuple[int, int, str]:
    cache, token = prefill(model, prompt, len(prompt) + 8)
    token = decode_step(model, cache, token, loop)  # warm
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        decode_step(model, cache, token, loop)
    events = [e for e in prof.events() if not e.name.startswith("ProfilerStep")]
    top_level = sum(1 for e in events if e.cpu_parent is None)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
    return len(events), top_level, table


def model_ms_per_token(model, prompt: list[int], tokens: int, loop: DecodeStep | None = None) -> float:
    cache, token = prefill(model, prompt, len(prompt) + tokens + 1)
    start = time.perf_counter()
    for _ in range(tokens):
        token = decode_step(model, cache, token, loop)
    return (time.perf_counter() - start) * 1000 / tokens


def stream_ms_per_token(model, prompt: list[int], tokens: int) -> float:
    stamps = [time.perf_counter() for _ in stream_generate(model, [prompt], GenerationConfig(max_new_tokens=tokens))]
    return (stamps[-1] - stamps[0]) * 1000 / (tokens - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", default="fp32,bf16,int8,int4")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs, the best is kept (0: count ops only)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=12, help="rows of the per-operator table (0: none)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for dtype in args.dtypes.split(","):
        start = time.perf_counter()
        loaded = load(dtype)
        model = loaded.model
        prompt = prompt_ids(loaded.tokenizer)
        loop = DecodeStep.build(model)
        model_ms_per_token(model, prompt, 4)  # warm-up
        model_ms_per_token(model, prompt, 4, loop)
        ready = time.perf_counter() - start
        events, top_level, _ = op_counts(model, prompt, 0, None)
        loop_events, loop_top_level, table = op_counts(model, prompt, args.top, loop)
        if args.top:
            print(f"--- {dtype}: one decode step through the loop, {loop_events} operator calls "
                  f"({loop_top_level} top-level)\n{table}")
        times = {"module": [], "loop": [], "stream": []}
        for _ in range(args.repeats):  # alternating, so that a busy machine slows each alike
            times["module"].append(model_ms_per_token(model, prompt, args.tokens))
            times["loop"].append(model_ms_per_token(model, prompt, args.tokens, loop))
            times["stream"].append(stream_ms_per_token(model, prompt, args.tokens))
        best = {name: min(t, default=math.nan) for name, t in times.items()}
        rows.append((dtype, events, top_level, loop_events, loop_top_level, best, ready))
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    print(f"\n{'dtype':>5} {'ops/step':>8} {'top-level':>9} {'loop ops':>8} {'loop top':>8} {'module ms/tok':>13} "
          f"{'loop ms/tok':>11} {'stream ms/tok':>13} {'load+warm s':>11}")
    for dtype, events, top_level, loop_events, loop_top_level, best, ready in rows:
        print(f"{dtype:>5} {events:8d} {top_level:9d} {loop_events:8d} {loop_top_level:8d} {best['module']:13.2f} "
              f"{best['loop']:11.2f} {best['stream']:13.2f} {ready:11.1f}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
