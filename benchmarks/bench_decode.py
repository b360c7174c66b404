"""Decoding speed, batch 1: lmlab (fp32, bf16, int8, int4) vs transformers (fp32, bf16) vs llama.cpp.

All read the embedded SmolLM2-135M-Instruct GGUF: lmlab with `load_model` (projections fused, int8
and int4 quantized on load), transformers with its own GGUF reader, llama.cpp through
`llama-cpp-python` on the file itself (Q4_1 weights, `n_threads` threads; install the optional
`bench` extra). Each decodes `--new-tokens` greedy tokens after a ~300-token prompt, with the end of
sequence switched off so all write every token. Rounds alternate the runners, so that a busy
machine slows them alike. For each it prints:

- prefill tokens/s: prompt tokens / (time until the first new token);
- decode tokens/s: (new tokens - 1) / (time from the first new token to the last), the per-token loop;

lmlab-int8 and lmlab-int4 run lmlab's VNNI kernels where they build (lmlab.kernels); lmlab-int8-torch and
lmlab-int4-torch are the same models on PyTorch's low-bit kernels (LMLAB_KERNELS=torch), for the ratio.

then the medians over the rounds, the ratios the acceptance names, whether lmlab and transformers
wrote the same tokens at the same dtype, the load average (before and after) and the CPU's
matrix-math flags (bf16 is emulated without AVX512-BF16 or AMX).

    python benchmarks/bench_decode.py [--rounds 3] [--threads 2] [--new-tokens 128]
                                      [--runners lmlab-fp32,...,llama.cpp] [--group-size 64]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF reader draws its own bars

import torch

from lmlab.errors import LmlabError
from lmlab.generation import GenerationConfig, stream_generate
from lmlab.hub.resolve import embedded_path, load_model

MODEL = "smollm2-135m-instruct"
PROMPT_TOKENS = 300
RUNNERS = ("lmlab-fp32", "lmlab-bf16", "lmlab-int8", "lmlab-int4", "lmlab-int8-torch", "lmlab-int4-torch",
           "transformers-fp32", "transformers-bf16", "llama.cpp")
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
TEXT = """The history of bread is the history of people settling down. Long before anyone wrote, people \
ground wild grains between stones, mixed the flour with water and baked flat cakes on hot rocks. When \
farming began in the Fertile Crescent, wheat and barley became the staples of the first villages, and \
bakers learned that dough left to stand would rise, because wild yeasts from the air had begun to \
ferment it. The Egyptians built ovens of clay and baked dozens of kinds of loaves; workers on the \
pyramids were paid partly in bread and beer. The Greeks and Romans made baking a trade, with guilds, \
public ovens and laws on the weight of a loaf. In medieval Europe the colour of one's bread told one's \
place in society: white bread for the rich, dark rye and barley for the poor. Mills driven by water and \
wind ground the grain, and the miller and the baker were among the most important people in any town. \
The industrial revolution changed everything again: steel roller mills made white flour cheap, and \
factories began to bake sliced bread wrapped in paper. Today a baker can choose among hundreds of \
flours, and the old methods have come back: sourdough starters kept alive for decades, long slow \
fermentation, and loaves baked on stone, much as they were thousands of years ago. What will the \
bakers of the next century make of our bread? Perhaps they will"""

# One run: (seconds until the first new token, seconds from the first new token to the last, tokens)
Timing = tuple[float, float, list[int]]


def prompt_ids(tokenizer, n: int = PROMPT_TOKENS) -> list[int]:
    ids = tokenizer.encode(TEXT * (1 + n // 250))
    return ids[:n]


def cpu_flags() -> str:
    """Which of the CPU's vector / matrix extensions that matter for bf16 and int8 are present."""
    try:
        with open("/proc/cpuinfo") as f:
            present = set(next(line for line in f if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return "unknown (no /proc/cpuinfo)"
    return " ".join(f"{flag}:{'yes' if flag in present else 'no'}" for flag in CPU_FLAGS)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def lmlab_runner(dtype: str, group_size: int, prompt: list[int], new_tokens: int) -> Callable[[int], Timing]:
    """Load the embedded model in `dtype` (int8/int4: quantized on load; "int8-torch" / "int4-torch": the same
    on PyTorch's low-bit kernels instead of lmlab's, LMLAB_KERNELS=torch while loading); raise if lmlab cannot."""
    dtype, _, kernels = dtype.partition("-")
    if dtype in TORCH_DTYPES:
        loaded = load_model(MODEL, dtype=TORCH_DTYPES[dtype], fuse=True)
    else:
        before = os.environ.get("LMLAB_KERNELS")
        os.environ["LMLAB_KERNELS"] = kernels or before or ""
        try:
            loaded = load_model(MODEL, dtype=dtype, group_size=group_size if dtype == "int4" else None, fuse=True)
        finally:
            if before is None:
                del os.environ["LMLAB_KERNELS"]
            else:
                os.environ["LMLAB_KERNELS"] = before
    model = loaded.model
    model.config.eos_token_id = None

    def run(n: int = new_tokens) -> Timing:
        stamps, tokens = [], []
        start = time.perf_counter()
        for delta in stream_generate(model, [prompt], GenerationConfig(max_new_tokens=n)):
            stamps.append(time.perf_counter())
            tokens.append(delta.token_id)
        return stamps[0] - start, stamps[-1] - stamps[0], tokens

    return run


def transformers_runner(dtype: str, prompt: list[int], new_tokens: int, pad_id: int) -> Callable[[int], Timing]:
    import transformers

    transformers.utils.logging.disable_progress_bar()

    class Stamps(transformers.generation.streamers.BaseStreamer):
        """Time-stamps each call of `put`: once with the prompt, then once per new token."""

        def __init__(self) -> None:
            self.stamps: list[float] = []

        def put(self, value) -> None:
            self.stamps.append(time.perf_counter())

        def end(self) -> None:
            pass

    gguf = embedded_path(MODEL)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                              dtype=TORCH_DTYPES[dtype]).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = pad_id
    ids = torch.tensor([prompt])

    def run(n: int = new_tokens) -> Timing:
        streamer = Stamps()
        start = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                             do_sample=False, streamer=streamer)
        new = streamer.stamps[1:]
        return new[0] - start, new[-1] - new[0], out[0, len(prompt):].tolist()

    return run


class LlamaCpp:
    """llama.cpp (`llama-cpp-python`) on the embedded GGUF file, in a child process of its own: a crash
    of the native library (or a missing install) is reported as an error instead of ending the run.

    `call(function, *args)` runs a module-level function in the child with the loaded
    `llama_cpp.Llama` as its first argument, and returns what it returns.
    """

    def __init__(self, threads: int, n_ctx: int) -> None:
        import multiprocessing

        if importlib.util.find_spec("llama_cpp") is None:
            raise ImportError("llama-cpp-python is not installed")
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_llama_cpp_child, args=(child, threads, n_ctx), daemon=True)
        self.process.start()
        self.call(_llama_cpp_ready)

    def call(self, function: Callable, *args):
        try:
            self.conn.send((function, args))
            status, value = self.conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self.process.join()
            raise RuntimeError(f"llama.cpp's process died (exit code {self.process.exitcode})") from None
        if status == "error":
            raise RuntimeError(f"llama.cpp: {value}")
        return value

    def close(self) -> None:
        if self.process.is_alive():
            self.conn.send(None)
            self.process.join(10)


def _llama_cpp_child(conn, threads: int, n_ctx: int) -> None:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(embedded_path(MODEL)), n_threads=threads, n_threads_batch=threads,
                          n_ctx=n_ctx, n_batch=512, verbose=False)
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the parent exited without sending None
            return
        if message is None:
            return
        function, args = message
        try:
            conn.send(("ok", function(llm, *args)))
        except Exception as error:  # reported to the parent, which decides
            conn.send(("error", f"{type(error).__name__}: {error}"))


def _llama_cpp_ready(llm) -> bool:
    return True


def llama_cpp_generate(llm, prompt: list[int], n: int) -> Timing:
    """Greedy decoding of n tokens after the prompt, timed like the other runners."""
    llm.reset()  # no prefix reuse from the previous round: the prompt is prefilled every time
    stamps, tokens = [], []
    start = time.perf_counter()
    for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        stamps.append(time.perf_counter())
        tokens.append(token)
        if len(tokens) == n:
            break
    return stamps[0] - start, stamps[-1] - stamps[0], tokens


def llama_cpp_runner(threads: int, prompt: list[int], new_tokens: int) -> Callable[[int], Timing]:
    llama = LlamaCpp(threads, len(prompt) + new_tokens + 16)
    return lambda n=new_tokens: llama.call(llama_cpp_generate, prompt, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=PROMPT_TOKENS)
    parser.add_argument("--group-size", type=int, default=64, help="int4 group size")
    parser.add_argument("--runners", default=",".join(RUNNERS), help=f"comma-separated, from {', '.join(RUNNERS)}")
    args = parser.parse_args()
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2 (decode speed is timed from the first new token)")
    torch.set_num_threads(args.threads)
    print(f"load average before: {load_average()}")
    print(f"CPU flags: {cpu_flags()}")

    tokenizer = load_model(MODEL).tokenizer
    prompt = prompt_ids(tokenizer, args.prompt_tokens)
    print(f"SmolLM2-135M-Instruct, {len(prompt)}-token prompt, {args.new_tokens} greedy new tokens, batch 1, "
          f"{args.threads} threads, torch {torch.__version__}")
    runners: dict[str, Callable[[int], Timing]] = {}
    for name in args.runners.split(","):
        family, _, dtype = name.partition("-")
        try:
            if family == "lmlab":
                runners[name] = lmlab_runner(dtype, args.group_size, prompt, args.new_tokens)
            elif family == "transformers":
                runners[name] = transformers_runner(dtype, prompt, args.new_tokens, tokenizer.pad_id or 0)
            elif name == "llama.cpp":
                runners[name] = llama_cpp_runner(args.threads, prompt, args.new_tokens)
            else:
                parser.error(f"unknown runner {name!r}: choose from {', '.join(RUNNERS)}")
        except ImportError as error:  # llama-cpp-python is an optional extra
            print(f"skipped {name}: {error} (pip install 'lmlab[bench]')")
        except (TypeError, LmlabError) as error:  # load_model does not take this dtype (yet)
            if dtype in TORCH_DTYPES:
                raise
            print(f"skipped {name}: load_model(..., dtype={dtype!r}) is not available: {error}")
    for name, run in list(runners.items()):  # warm-up: first-call allocations and kernel selection
        try:
            run(4)
        except RuntimeError as error:  # llama.cpp's native library failed
            print(f"skipped {name}: {error}")
            del runners[name]

    prefill = {name: [] for name in runners}
    decode = {name: [] for name in runners}
    tokens: dict[str, list[int]] = {}
    for r in range(args.rounds):
        for name, run in runners.items():
            first, loop, tokens[name] = run(args.new_tokens)
            assert len(tokens[name]) == args.new_tokens, (name, len(tokens[name]))
            prefill[name].append(len(prompt) / first)
            decode[name].append((args.new_tokens - 1) / loop)
            print(f"round {r + 1}  {name:>17}: prefill {prefill[name][-1]:7.1f} tok/s   "
                  f"decode {decode[name][-1]:6.1f} tok/s")

    median = {name: (statistics.median(prefill[name]), statistics.median(decode[name])) for name in runners}
    print(f"\nmedians over {args.rounds} rounds")
    print(f"{'runner':>17}  {'prefill tok/s':>13}  {'decode tok/s':>12}")
    for name, (p, d) in median.items():
        print(f"{name:>17}  {p:13.1f}  {d:12.1f}")

    print("\nratios (above 1: lmlab is faster)")
    for mine, ref, target in (("lmlab-int4", "llama.cpp", 1.0), ("lmlab-int8", "llama.cpp", 0.8),
                              ("lmlab-int4", "lmlab-int4-torch", None), ("lmlab-int8", "lmlab-int8-torch", None),
                              ("lmlab-fp32", "transformers-fp32", 1.3), ("lmlab-bf16", "transformers-bf16", 1.3)):
        if mine in median and ref in median:
            ratio = median[mine][1] / median[ref][1]
            print(f"decode {mine} / {ref}: {ratio:.2f}" + (f" (target >= {target})" if target else
                                                          " (lmlab's kernels / PyTorch's)"))
        else:
            print(f"decode {mine} / {ref}: not measured ({mine if mine not in median else ref} did not run)")
    ours = {name: p for name, (p, _) in median.items() if name.startswith("lmlab")}
    if ours and "llama.cpp" in median:
        best = max(ours, key=ours.get)
        print(f"prefill best lmlab ({best}) / llama.cpp: {ours[best] / median['llama.cpp'][0]:.2f} (target >= 1.0)")
    for dtype in TORCH_DTYPES:
        mine, ref = f"lmlab-{dtype}", f"transformers-{dtype}"
        if mine in tokens and ref in tokens:
            print(f"same {args.new_tokens} tokens, lmlab and transformers {dtype}: "
                  f"{'yes' if tokens[mine] == tokens[ref] else 'no'}")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
