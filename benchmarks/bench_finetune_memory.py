"""Planned vs measured peak memory of the DialogSum fine-tunes of SmolLM2-135M (LoRA and full), a few steps each.

The settings are those of benchmarks/finetune_dialogsum.py (the embedded SmolLM2-135M-Instruct, chat
template, --max-length 384, batch 8, fp32; LoRA rank 16 on every linear layer with dropout 0.05, or full
fine-tuning), on the longest DialogSum dev dialogues, so that every batch is as long as the plan assumes
(its micro-batch of the longest sequence).

planned: the plan `lmlab finetune` prints (`lmlab.finetuning.prepare.plan_memory`): fp32 weights, gradients
and AdamW moments of the trainable parameters only, and the activations autograd keeps, counted on the model
per token (each LoRA adapter's dropped-out input and mask, the head on the labelled positions only).
measured, two ways:
- tensors: what one training step of the plan's batch (the longest training examples) holds at its peak, the
  end of the forward pass, counted on the tensors: the parameters, the gradients and AdamW moments of the
  trainable ones, and every tensor autograd saved for the backward pass (`saved_tensor_bytes`), each storage
  once. This is what the plan models, and the claim checked: measured / planned within 0.85-1.15.
- resident: the peak resident memory of the `lmlab finetune` process above its resident memory before the
  model was loaded (VmHWM reset through /proc/self/clear_refs: `lmlab.planning.measure.PeakMemory`), what
  the run prints. It also holds what no plan of tensors counts: temporaries, and the allocator's slack (the
  trainer fixes glibc's mmap threshold so freed tensors go back to the system, lmlab.allocator; without it
  the LoRA run's resident peak was 1.59x the plan).
Both ratios are checked: within 0.85-1.15.
Each method runs in its own process. Memory figures are meaningful on a loaded machine; a few minutes of CPU
per method.

    python benchmarks/bench_finetune_memory.py [--steps 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dialogsum" / "dialogsum.dev.jsonl"
MODEL = "smollm2-135m-instruct"
PROMPT = ["--prompt-field", "dialogue", "--completion-field", "summary",
          "--template", "Summarize the following conversation.\\n\\n{dialogue}"]
METHODS = {
    "lora": ["--method", "lora", "--lora-targets", "all-linear", "--lora-rank", "16", "--lora-alpha", "32",
             "--lora-dropout", "0.05", "--lr", "1e-3"],
    "full": ["--method", "full", "--lr", "1e-4"],
}


def longest(data: Path, n: int, out: Path) -> Path:
    """The `n` longest dialogues of the DialogSum dev set, as a training file."""
    records = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    records.sort(key=lambda r: -len(r["dialogue"]))
    path = out / "longest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records[:n]), encoding="utf-8")
    return path


def tensor_peak(model_name: str, train: Path, method: str, batch_size: int, max_length: int, chat: bool) -> int:
    """Parameters + trainable gradients + AdamW moments + saved activations of one step on the `batch_size`
    longest training examples, as `lmlab finetune` sets the run up."""
    import torch

    from lmlab.data.finetune_data import Collator, DataFormat, load_data
    from lmlab.generation.incremental import padding_id
    from lmlab.hub.resolve import load_model
    from lmlab.models.lora import apply_lora
    from lmlab.planning.measure import saved_tensor_bytes
    from lmlab.training.objectives import loss_sum

    loaded = load_model(model_name)
    model, tokenizer = loaded.model.train(), loaded.tokenizer
    fmt = DataFormat(prompt_field="dialogue", completion_field="summary", chat=chat, max_length=max_length,
                     template=PROMPT[-1].replace("\\n", "\n"))
    data = load_data(train, fmt, tokenizer, None, 0.25, 0, False, eos_id=model.config.eos_token_id)
    if method == "lora":
        apply_lora(model, "all-linear", 16, 32, 0.05, [], 0)
    else:
        model.requires_grad_(True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-6)
    pad_id = padding_id(model, tokenizer)
    batch = Collator("generation", pad_id)(sorted(data.train, key=lambda e: -len(e.tokens))[:batch_size])
    peak = 0
    for _ in range(2):  # the first step creates the AdamW moments
        loss, activations = saved_tensor_bytes(lambda: loss_sum(model, batch), model.parameters())
        held = sum(p.numel() * p.element_size() for p in model.parameters())
        held += sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
                    if torch.is_tensor(t))
        held += sum(p.numel() * p.element_size() for p in trainable)  # the gradients the backward pass fills
        peak = max(peak, held + activations)
        loss.backward()
        del loss
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help=f"DialogSum records (default: {DATA})")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per method (default: 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--model", default=MODEL, help=f"model to fine-tune (default: {MODEL})")
    parser.add_argument("--max-length", type=int, default=384, help="longest sequence in tokens (default: 384)")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per step (default: 8)")
    parser.add_argument("--tensor-count", metavar="METHOD", help=argparse.SUPPRESS)  # the child process's job
    parser.add_argument("--train", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True,
                        help="prompts in the model's chat template (default: on; off for a model without one)")
    args = parser.parse_args()
    if args.tensor_count:
        torch_threads(args.threads)
        print(tensor_peak(args.model, args.train, args.tensor_count, args.batch_size, args.max_length, args.chat))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        train = longest(args.data, args.batch_size * args.steps + 8, Path(tmp))
        for name, options in METHODS.items():
            out = Path(tmp) / name
            command = [sys.executable, "-m", "lmlab.cli.main", "--threads", str(args.threads), "finetune", args.model,
                       "--data", str(train), "--val-fraction", "0.25", *PROMPT,
                       "--chat" if args.chat else "--no-chat", "--max-length", str(args.max_length),
                       *options, "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--dtype", "fp32",
                       "--no-progress", "--save-adapter-only" if name == "lora" else "--no-progress", "--out", str(out)]
            print("$ lmlab " + " ".join(command[3:]), flush=True)
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            summary = json.loads((out / "finetune.json").read_text(encoding="utf-8"))
            planned, resident = summary["memory_plan"]["total"], summary["peak_memory_bytes"]
            plan = summary["memory_plan"]
            child = [sys.executable, __file__, "--tensor-count", name, "--train", str(train), "--model", args.model,
                     "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
                     "--threads", str(args.threads), "--chat" if args.chat else "--no-chat"]
            tensors = int(subprocess.run(child, check=True, capture_output=True, text=True).stdout.split()[-1])
            print(f"{name}: planned {planned / 1e9:.2f} GB (weights {plan['weights'] / 1e9:.2f}, gradients "
                  f"{plan['gradients'] / 1e9:.2f}, AdamW {plan['optimizer_states'] / 1e9:.2f}, activations "
                  f"{plan['activations'] / 1e9:.2f}); measured: tensors {tensors / 1e9:.2f} GB, resident "
                  f"{resident / 1e9:.2f} GB", flush=True)
            rows.append((name, planned, tensors, resident))
    print(f"\n{'method':<6} {'planned':>10} {'tensors':>10} {'ratio':>6}  within 15%  {'resident':>10} {'ratio':>6}"
          "  within 15%")
    for name, planned, tensors, resident in rows:
        print(f"{name:<6} {planned / 1e9:>7.2f} GB {tensors / 1e9:>7.2f} GB {tensors / planned:>6.3f}  "
              f"{within(tensors / planned):<10} {resident / 1e9:>7.2f} GB {resident / planned:>6.3f}  "
              f"{within(resident / planned)}")


def within(ratio: float) -> str:
    return "yes" if 0.85 <= ratio <= 1.15 else "NO"


def torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


if __name__ == "__main__":
    main()
