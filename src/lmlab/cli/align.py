"""`lmlab align`: align a language model with human preferences.

A thin shell over `lmlab.finetuning.recipe.finetune` with the DPO objective (`lmlab.alignment.dpo`).
"""

from __future__ import annotations

import argparse

from lmlab.finetuning.datasets import DataFormat
from lmlab.finetuning.recipe import FinetuneSettings, finetune
from lmlab.hub.resolve import DEFAULT_MODEL
from lmlab.training.trainer import DTYPES

METHODS = ("dpo",)
DEFAULT_LR = {"lora": 5e-5, "full": 5e-7}  # TRL's DPO examples: 5e-7 full (Zephyr), higher for LoRA

DESCRIPTION = """\
Align a language model with human preferences: make the answers people
preferred more likely than the ones they rejected.

  --method dpo   Direct Preference Optimization (Rafailov et al. 2023): no reward
                 model, no sampling; the loss of a pair is
                   -log sigmoid(beta * [log pi(chosen)/pi_ref(chosen)
                                        - log pi(rejected)/pi_ref(rejected)])
                 with pi_ref the model as it starts (its log-probabilities are
                 computed once, before training; a LoRA model's own base is the
                 reference, no second copy in memory). beta (--beta, 0.1) sets
                 how tightly the model stays near the reference.

The data is preference pairs (.jsonl, .json or .csv): "chosen" and "rejected"
whole conversations as Anthropic's HH-RLHF stores them ("\\n\\nHuman: ...
\\n\\nAssistant: ..."; the turns both share are the prompt), or "prompt",
"chosen", "rejected". Only the answers are scored. Evaluations report what TRL
logs: the implicit rewards beta * log(pi/pi_ref) of both answers, their accuracy
(chosen above rejected) and margin, the log-probabilities, and the KL divergence
to the reference per answer token (LoRA).

OUT gets the trainer's run files (run.json, metrics.jsonl, loss.png,
checkpoints/, --resume continues), finetune.json (settings, scores, times,
memory), model/ (the aligned model) and adapter/ (LoRA).

examples:
  lmlab align --method dpo --data hh_harmless.jsonl --beta 0.1 --steps 200 --out runs/dpo
  lmlab align smollm2-135m-instruct --method dpo --data prefs.jsonl --weights full --lr 5e-7 --out runs/dpo-full
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("align", help="align a language model with preference pairs (DPO)",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help=f"the language model to align (default: {DEFAULT_MODEL})")
    p.add_argument("--method", choices=METHODS, default="dpo", help="the alignment method (default: dpo)")
    p.add_argument("--data", required=True, metavar="FILE", help="preference pairs (.jsonl, .json or .csv)")
    p.add_argument("--val", metavar="FILE", help="held-out pairs (default: hold out --val-fraction of --data)")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                   help="share of --data held out when there is no --val (default: 0.1)")
    p.add_argument("--beta", type=float, default=0.1, metavar="B",
                   help="DPO's beta: the weight of the tie to the reference model; smaller lets the model move "
                        "further (default: 0.1, as the paper and TRL)")
    p.add_argument("--prompt-field", default="prompt", metavar="NAME", help="the field holding the prompt, when "
                   "the pairs are not whole conversations (default: prompt)")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="write prompts with the model's chat template (default: when the tokenizer has one)")
    p.add_argument("--max-length", type=int, default=512, metavar="N",
                   help="longest prompt + answer in tokens; longer prompts keep their end (default: 512)")
    p.add_argument("--weights", choices=("lora", "full"), default="lora",
                   help="lora: train low-rank adapters (Hu et al. 2021); full: every weight (default: lora)")
    p.add_argument("--lora-rank", type=int, default=8, metavar="R", help="rank of each adapter (default: 8)")
    p.add_argument("--lora-alpha", type=float, default=16.0, metavar="A", help="adapter scale alpha (default: 16)")
    p.add_argument("--lora-targets", default="q,v", metavar="NAMES",
                   help="layers that get adapters: q,k,v,o,up,gate,down or all-linear (default: q,v)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, metavar="E", help="passes over the pairs (default: 1)")
    length.add_argument("--steps", type=int, metavar="N", help="optimizer steps, instead of --epochs")
    p.add_argument("--lr", type=float, metavar="LR", help="peak learning rate (default: "
                   + ", ".join(f"{v:g} for {k}" for k, v in DEFAULT_LR.items()) + ")")
    p.add_argument("--batch-size", type=int, default=8, metavar="B", help="pairs per optimizer step (default: 8)")
    p.add_argument("--grad-accum", type=int, default=1, metavar="N", help="micro-batches per step (default: 1)")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="fp32, or bf16 autocast")
    p.add_argument("--eval-every", type=int, metavar="N", help="steps between evaluations (default: one epoch)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, data order, adapters")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty, unless --resume)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_align)


def settings_from(args: argparse.Namespace) -> FinetuneSettings:
    fmt = DataFormat(task=args.method, prompt_field=args.prompt_field, chat=args.chat, max_length=args.max_length)
    return FinetuneSettings(
        model=args.model, data=args.data, out=args.out, validation=args.val, validation_fraction=args.val_fraction,
        format=fmt, method=args.weights, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
        lora_targets=args.lora_targets, epochs=1.0 if args.epochs is None else args.epochs, steps=args.steps,
        lr=args.lr or DEFAULT_LR[args.weights], batch_size=args.batch_size, grad_accum=args.grad_accum,
        dtype=args.dtype, eval_metric="accuracy", eval_every=args.eval_every, seed=args.seed,
        progress=not args.no_progress, resume=args.resume, beta=args.beta, eval_samples=10**9,
    )


def run_align(args: argparse.Namespace) -> int:
    result = finetune(settings_from(args))
    if not result.already_done:
        saved = [str(p) for p in (result.model_dir, result.adapter_dir) if p is not None]
        print(f"{result.steps} steps in {result.train_seconds:.0f} s (wall {result.wall_seconds:.0f} s), peak memory "
              f"{result.peak_memory_bytes / 1e9:.2f} GB; saved {' and '.join(saved)}")
    return 0
