"""Quantizing the embedded SmolLM2-135M-Instruct: checkpoint size, perplexity and speed, fp32 vs bf16 vs int8.

Every variant is written to disk with lmlab's own writer (fp32: `save_checkpoint`; others:
`save_quantized`), reloaded with `load_checkpoint` / `load_quantized`, and measured on the same text:

- file: bytes of model.safetensors, and its share of the fp32 file;
- perplexity on the first --tokens tokens of tinyshakespeare (windows of 512 tokens every 256), and its
  change against fp32;
- scoring speed: tokens/s of that perplexity run (batched prefill);
- decoding speed: greedy tokens/s with the KV cache, one token at a time (--decode-tokens, 0 to skip).

Variants: fp32; bf16 computing in bf16, and bf16 / fp16 weights computing in fp32 (what a default
fp32 load of those checkpoints runs); int8 absmax and zero-point at tensor, channel and group (128)
granularity (tensor and channel on PyTorch's int8 weight-only kernel, group dequantized on the fly);
int8 absmax per channel with bf16 activations; int8 absmax per channel with the embedding and tied head
left in fp32; int4 in groups of 32 and 64 (PyTorch's int4 kernel; embedding and head int8). The
reference is PyTorch's own dynamic int8 quantization of the same model's linear layers
(torch.ao.quantization.quantize_dynamic, per-channel weights, activations quantized per batch), measured
in the same run (it has no safetensors file).

    python benchmarks/bench_quantize.py [--tokens 1024] [--decode-tokens 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from lmlab.evaluation.perplexity import perplexity
from lmlab.hub.checkpoint import load_checkpoint, save_checkpoint
from lmlab.hub.resolve import load_model
from lmlab.models import Transformer
from lmlab.hub.quantized_checkpoint import load_quantized, save_quantized
from lmlab.quantization.int4 import Int4Spec
from lmlab.quantization.quantized_linear import quantize_model
from lmlab.hub.quantize import tensor_bytes
from lmlab.quantization.schemes import QuantSpec

TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"
WINDOW, STRIDE = 512, 256


@dataclass
class Variant:
    name: str
    make: object  # fp32 model -> model to save
    load: object  # folder -> model to measure
    save: object = save_quantized


@dataclass
class Row:
    name: str
    file_bytes: int | None
    weight_bytes: int | None
    ppl: float
    score_tps: float
    decode_tps: float | None


def cast(dtype: torch.dtype):
    return lambda model: model.to(dtype)


def int8(scheme: str, granularity: str, include_embeddings: bool = True):
    return lambda model: quantize_model(model, QuantSpec(scheme, granularity, 128), include_embeddings)


VARIANTS = [
    Variant("fp32", lambda m: m, lambda f: load_checkpoint(f), lambda m, out: save_checkpoint(m, out)),
    Variant("bf16 (bf16 compute)", cast(torch.bfloat16), lambda f: load_quantized(f, torch.bfloat16)),
    Variant("bf16 weights, fp32 compute", cast(torch.bfloat16), lambda f: load_quantized(f)),
    Variant("fp16 weights, fp32 compute", cast(torch.float16), lambda f: load_quantized(f)),
    *[Variant(f"int8 {scheme} {granularity}", int8(scheme, granularity), lambda f: load_quantized(f))
      for scheme in ("absmax", "zeropoint") for granularity in ("tensor", "channel", "group")],
    Variant("int8 absmax channel, bf16 act.", int8("absmax", "channel"),
            lambda f: load_quantized(f, torch.bfloat16)),
    Variant("int8 absmax channel, fp32 emb.", int8("absmax", "channel", False), lambda f: load_quantized(f)),
    *[Variant(f"int4 groups of {group}", lambda m, g=group: quantize_model(m, Int4Spec(g)), lambda f: load_quantized(f))
      for group in (32, 64)],
]


@torch.no_grad()
def decode_speed(model: Transformer, prompt: list[int], n_tokens: int) -> float:
    """Greedy tokens/s after the prompt, one token per forward pass with the KV cache."""
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    cache = model.new_cache(1, len(prompt) + n_tokens + 1, dtype=dtype)
    logits = model(torch.tensor([prompt]), cache=cache, last_logits_only=True).logits
    token = logits[:, -1].argmax(-1, keepdim=True)
    start = time.perf_counter()
    for _ in range(n_tokens):
        token = model(token, cache=cache, last_logits_only=True).logits[:, -1].argmax(-1, keepdim=True)
    return n_tokens / (time.perf_counter() - start)


def measure(name: str, model: Transformer, ids: list[int], decode_tokens: int, file_bytes: int | None,
            weight_bytes: int | None) -> Row:
    start = time.perf_counter()
    result = perplexity(model, ids, max_length=WINDOW, stride=STRIDE, progress=False)
    score_tps = len(ids) / (time.perf_counter() - start)
    decode_tps = decode_speed(model, ids[:64], decode_tokens) if decode_tokens else None
    return Row(name, file_bytes, weight_bytes, result.ppl, score_tps, decode_tps)


def torch_dynamic_int8(model: Transformer) -> Transformer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


def print_table(rows: list[Row]) -> None:
    fp32 = rows[0]
    print(f"{'variant':<32} {'file MB':>8} {'% fp32':>7} {'weights MB':>10} {'perplexity':>10} {'Δ ppl':>8} "
          f"{'score tok/s':>11} {'decode tok/s':>12}")
    for row in rows:
        size = f"{row.file_bytes / 1e6:8.1f} {row.file_bytes / fp32.file_bytes:7.1%}" if row.file_bytes else " " * 16
        weights = f"{row.weight_bytes / 1e6:10.1f}" if row.weight_bytes else " " * 10
        decode = f"{row.decode_tps:12.2f}" if row.decode_tps else ""
        print(f"{row.name:<32} {size} {weights} {row.ppl:10.4f} {row.ppl / fp32.ppl - 1:+8.2%} "
              f"{row.score_tps:11.1f} {decode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1024, help="tokens of tinyshakespeare to score")
    parser.add_argument("--decode-tokens", type=int, default=32, help="greedy tokens to time (0: skip decoding)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    loaded = load_model("smollm2-135m-instruct")
    ids = loaded.tokenizer.encode(TEXT.read_text(encoding="utf-8"))[: args.tokens]
    print(f"SmolLM2-135M-Instruct, {len(ids)} tokens of {TEXT.name}, windows {WINDOW}/{STRIDE}, "
          f"{args.threads} thread(s)\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, variant in enumerate(VARIANTS):
            folder = Path(tmp) / str(index)
            variant.save(variant.make(copy.deepcopy(loaded.model)), folder)
            model = variant.load(folder)
            file_bytes = (folder / "model.safetensors").stat().st_size
            rows.append(measure(variant.name, model, ids, args.decode_tokens, file_bytes, tensor_bytes(model)))
            print(f"  measured {variant.name}", flush=True)
            del model
    rows.append(measure("reference: torch dynamic int8", torch_dynamic_int8(copy.deepcopy(loaded.model)), ids,
                        args.decode_tokens, None, None))
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
