"""Resident memory of a loaded model, fp32 vs bf16 vs int8 vs int4, each in a fresh process.

For each --dtype, a new Python process imports lmlab, reads its resident set size (RSS, from
/proc/self/statm), loads the model with `load_model(model, dtype=...)` (the GGUF's Q4_1 blocks stay
int4 under int4), runs one forward pass of 8 tokens (so lazily built kernel operands exist), collects
garbage, and reads RSS again. It prints, per dtype:

- RSS after imports, RSS with the model loaded, and the growth (what the model costs the process);
- the bytes of the model's tensors (parameters and buffers, and the int4 kernel's packed copies);
- the peak RSS of the process (ru_maxrss: what loading needed at its worst);

and the ratios to fp32 of the loaded RSS and of the growth. The acceptance line of issue 11 is
"resident memory after loading the int4 model <= 35% of the fp32 model's".

    python benchmarks/bench_load_memory.py [--model smollm2-135m-instruct] [--dtypes fp32,bf16,int8,int4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import gc, json, resource, sys
import torch
from lmlab.hub.resolve import load_model


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def model_bytes(model) -> int:
    seen, total = set(), 0
    tensors = list(model.parameters()) + list(model.buffers())
    for module in model.modules():  # the int4 kernel's operands are plain attributes
        tensors += [t for t in vars(module).values() if isinstance(t, torch.Tensor)]
        tensors += [t for t in getattr(module, "_operands", ())[2:]]
    for t in tensors:
        if t.device.type != "meta" and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


model, dtype = sys.argv[1], sys.argv[2]
gc.collect()
before = rss()
loaded = load_model(model, dtype=dtype)
with torch.no_grad():
    loaded.model(torch.arange(8).unsqueeze(0))
gc.collect()
after = rss()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"before": before, "after": after, "peak": peak, "tensors": model_bytes(loaded.model)}))
"""


def measure(model: str, dtype: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, model, dtype], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtypes", default="fp32,bf16,int8,int4")
    args = parser.parse_args()
    rows = {dtype: measure(args.model, dtype) for dtype in args.dtypes.split(",")}
    mb = 1e6
    print(f"{args.model}, each dtype in a fresh process (MB = 10^6 bytes)")
    print(f"{'dtype':<6} {'RSS imports':>12} {'RSS loaded':>11} {'growth':>8} {'tensors':>8} {'peak RSS':>9}"
          f" {'loaded/fp32':>12} {'growth/fp32':>12}")
    base = rows.get("fp32")
    for dtype, r in rows.items():
        growth = r["after"] - r["before"]
        ratios = ("", "") if base is None else (f"{r['after'] / base['after']:.1%}",
                                                f"{growth / (base['after'] - base['before']):.1%}")
        print(f"{dtype:<6} {r['before'] / mb:>12.0f} {r['after'] / mb:>11.0f} {growth / mb:>8.0f} "
              f"{r['tensors'] / mb:>8.0f} {r['peak'] / mb:>9.0f} {ratios[0]:>12} {ratios[1]:>12}")


if __name__ == "__main__":
    main()
