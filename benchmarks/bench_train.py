"""Training throughput: lmlab's Trainer vs transformers' GPT2LMHeadModel vs a plain PyTorch loop, same run.

All three train nanoGPT's CPU shakespeare-char model (4 layers, 4 heads, d_model 128, context 64,
batch 12, GPT-2 block: learned positions, LayerNorm, tanh-GELU, tied embeddings, no dropout) on the
same packed character-level data, with the same AdamW (decay on matrices only), warmup + cosine
schedule and gradient clipping at 1.0:

- lmlab:        `lmlab.training.Trainer` (data stream, logging, checkpoints: all of it) on lmlab's model;
- transformers: GPT2LMHeadModel built from the equivalent GPT2Config, in a plain loop;
- plain loop:   lmlab's model in the same plain loop (so lmlab vs plain is the trainer's overhead).

Rounds alternate the three so that a busy machine slows them alike; each prints tokens/s of wall
time (over the training steps: set-up, evaluation and checkpoint writing excluded) and tokens per
second of this process's CPU time (steps 2 to n-1), which other processes on a shared machine
hardly disturb when torch runs one thread. The medians give the ratios.

    python benchmarks/bench_train.py [--data input.txt] [--steps 200] [--rounds 3] [--threads N]

Without --data it uses the corpus lmlab ships.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.config import ModelConfig
from lmlab.data.corpus import default_documents
from lmlab.data.pipeline import PrepareSettings, prepare_documents
from lmlab.models import Transformer
from lmlab.training.objectives import objective_for
from lmlab.training.optim import WarmupCosine, make_optimizer
from lmlab.training.run_folder import open_run
from lmlab.training.trainer import TrainConfig, Trainer

BATCH, SEQ_LEN, LR, WARMUP = 12, 64, 1e-3, 100


def lmlab_config(vocab_size: int) -> ModelConfig:
    return ModelConfig(arch="decoder", vocab_size=vocab_size, d_model=128, n_layer=4, n_head=4, d_ff=512,
                       max_seq_len=SEQ_LEN, pos_encoding="learned", norm="layernorm", activation="gelu_tanh",
                       bias=True, tie_embeddings=True, dropout=0.0)


def hf_model(vocab_size: int) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab_size, n_positions=SEQ_LEN, n_embd=128, n_layer=4, n_head=4, n_inner=512,
                        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        layer_norm_epsilon=1e-5, tie_word_embeddings=True, bos_token_id=None, eos_token_id=None)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return GPT2LMHeadModel(config)


def plain_loop(model: torch.nn.Module, train, steps: int) -> tuple[float, float]:
    """nanoGPT-style loop: random sequences, forward, loss, backward, clip, AdamW step: (wall, CPU) tokens/s."""
    optimizer = make_optimizer(model, LR, 0.1, (0.9, 0.99))
    schedule = WarmupCosine(LR, LR / 10, WARMUP, steps)
    rng = np.random.default_rng(0)
    clock = CpuClock(steps)
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        chunks = torch.stack([train[int(i)] for i in rng.integers(len(train), size=BATCH)])
        schedule.apply(optimizer, step)
        logits = model(chunks[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), chunks[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.tick(step + 1)
    return steps * BATCH * SEQ_LEN / (time.perf_counter() - start), clock.tokens_per_s


class CpuClock:
    """Process CPU time from the end of step 1 to the end of step n-1: throughput that other processes on a
    busy machine hardly disturb (with one thread), and that leaves out set-up and the final evaluation."""

    def __init__(self, steps: int):
        self.steps, self.start, self.end = steps, 0.0, 0.0

    def tick(self, step: int) -> None:
        if step == 1:
            self.start = time.process_time()
        if step == self.steps - 1:
            self.end = time.process_time()

    @property
    def tokens_per_s(self) -> float:
        return (self.steps - 2) * BATCH * SEQ_LEN / (self.end - self.start)


def lmlab_trainer(data, tokenizer, steps: int, folder: Path) -> tuple[float, float]:
    model = Transformer(lmlab_config(tokenizer.vocab_size)).init_weights(seed=0)
    config = TrainConfig(steps=steps, batch_size=BATCH, lr=LR, warmup=WARMUP, beta2=0.99, eval_every=steps,
                         eval_batches=1, progress=False)
    clock = CpuClock(steps)
    trainer = Trainer(model, objective_for("decoder", tokenizer, SEQ_LEN), {"train": data.train},
                      {"train": data.validation}, config, open_run(folder, {"bench": "train"}), tokenizer=tokenizer,
                      peak_flops=1.0, on_step=lambda metrics, _: clock.tick(metrics.step))
    return trainer.train().tokens_per_s, clock.tokens_per_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="a text file (default: the shipped corpus)")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per measurement (default: 200)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three contenders (default: 3)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    documents = [args.data.read_text(encoding="utf-8")] if args.data else default_documents()
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_documents(documents, "char", Path(tmp) / "data", PrepareSettings(seq_len=SEQ_LEN),
                                 progress=False)
        tokenizer = data.load_tokenizer()
        print(f"data: {len(data.train):,} training sequences of {SEQ_LEN}+1 characters, vocab {tokenizer.vocab_size}; "
              f"{args.steps} steps x {BATCH} x {SEQ_LEN} tokens; torch {torch.__version__}, "
              f"{torch.get_num_threads()} thread(s); load average {os.getloadavg()[0]:.2f}")
        runs: dict[str, list[tuple[float, float]]] = {"lmlab": [], "transformers": [], "plain loop": []}
        for round_ in range(args.rounds):
            runs["lmlab"].append(lmlab_trainer(data, tokenizer, args.steps, Path(tmp) / f"run{round_}"))
            runs["transformers"].append(plain_loop(hf_model(tokenizer.vocab_size), data.train, args.steps))
            model = Transformer(lmlab_config(tokenizer.vocab_size)).init_weights(seed=0)
            runs["plain loop"].append(plain_loop(model, data.train, args.steps))
            print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1][0]:,.0f} tok/s ({v[-1][1]:,.0f} per CPU-s)"
                                                      for k, v in runs.items()), flush=True)
    wall = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in runs.items()}
    print(f"{'median':<14}{'tokens/s (wall)':>17}{'tokens per CPU-second':>24}")
    for name in runs:
        print(f"{name:<14}{wall[name]:>17,.0f}{cpu[name]:>24,.0f}")
    for other in ("transformers", "plain loop"):
        print(f"lmlab / {other:<13} = {wall['lmlab'] / wall[other]:.3f} (wall), "
              f"{cpu['lmlab'] / cpu[other]:.3f} (CPU time)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
