"""Planned vs measured memory of one fp32 AdamW training step on CPU, for three decoders from tiny to ~23M.

The plan is `lmlab.planning.measure.plan_step` (ZeRO's model-state accounting and Korthikanti et al.'s
activations, with the fused-attention setting lmlab's models use); the measurement is
`measure_training_step` (the step's tensors walked part by part, activations caught with
saved_tensors_hooks). For each model it prints every part planned and measured and their ratio, the
totals, and the process's peak resident memory above its start as a cross-check: the peak holds
temporaries the parts leave out, and it is lower than the sum of the parts when the gradients fill
memory the activations freed during the backward pass. The claim checked: total measured / planned
within 0.85-1.15.

    python benchmarks/bench_memory_plan.py [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from lmlab.config import ModelConfig, get_preset
from lmlab.planning.measure import measure_training_step, plan_step
from lmlab.planning.params import count_parameters
from lmlab.planning.units import format_bytes, format_count

CONFIGS: dict[str, tuple[ModelConfig, int, int]] = {
    "tiny (tiny-gpt2 preset)": (get_preset("tiny-gpt2"), 8, 128),
    "small (Llama style, GQA)": (get_preset("tiny-llama").replace(
        vocab_size=2048, d_model=256, n_layer=4, n_head=4, n_kv_head=2, d_head=64, d_ff=688, max_seq_len=256), 4, 256),
    "~23M (GPT-2 style)": (get_preset("tiny-gpt2").replace(
        vocab_size=8192, d_model=512, n_layer=6, n_head=8, n_kv_head=8, d_head=64, d_ff=2048, max_seq_len=256), 4, 256),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, (config, batch, seq_len) in CONFIGS.items():
        start = time.perf_counter()
        measured = measure_training_step(config, batch, seq_len)
        plan = plan_step(config, batch, seq_len)
        print(f"\n{name}: {format_count(count_parameters(config))} parameters, batch {batch} x {seq_len} tokens "
              f"({time.perf_counter() - start:.0f} s)")
        print(f"  {'part':<18} {'planned':>10} {'measured':>10} {'ratio':>7}")
        for term, (part, n_bytes) in zip(plan.terms, measured.parts().items()):
            print(f"  {part:<18} {format_bytes(term.bytes):>10} {format_bytes(n_bytes):>10} "
                  f"{n_bytes / term.bytes:>7.3f}")
        ratio = measured.total / plan.total_bytes
        print(f"  {'total':<18} {format_bytes(plan.total_bytes):>10} {format_bytes(measured.total):>10} {ratio:>7.3f}")
        rss = measured.peak_rss
        if rss is not None:
            print(f"  {'peak RSS increase':<18} {'':>10} {format_bytes(rss):>10} {rss / plan.total_bytes:>7.3f}")
        rows.append((name, ratio, 0.85 <= ratio <= 1.15))
    print("\nmeasured / planned total, within 15%:")
    for name, ratio, ok in rows:
        print(f"  {name:<26} {ratio:.3f}  {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    main()
