"""`lmlab pretrain`: train a model from scratch with its architecture's self-supervised objective."""

from __future__ import annotations

import argparse
import dataclasses
import json

from lmlab.config import ARCHS, ModelConfig
from lmlab.data.mixture import parse_mix
from lmlab.data.readers import TXT_SPLITS
from lmlab.cli.options import Applies, check_applies, field_default
from lmlab.cli.parallel import add_parallel_options, errors_said_by_rank_zero, parallel_config
from lmlab.cli.runs import add_logger_argument
from lmlab.errors import LmlabError, did_you_mean
from lmlab.quantization.schemes import GRANULARITIES
from lmlab.training.pretrain import BPE, DEFAULT_PRESETS, PretrainSettings, pretrain
from lmlab.training.trainer import DTYPES, TrainConfig

DESCRIPTION = """\
Pre-train a transformer from scratch, with the objective of its architecture:
  decoder          causal language modelling: predict every next token (GPT)
  encoder          masked language modelling: predict 15% masked tokens (BERT)
  encoder-decoder  span corruption: rebuild spans replaced by sentinels (T5)

Without --data it trains on the corpus lmlab ships (simple stories, animal
facts and sums, written by a seeded grammar), so a tiny model visibly learns
in a few minutes on a laptop CPU. --data takes folders made by `lmlab data
prepare` or raw .txt/.jsonl/.csv/.parquet files (prepared into OUT/data).

The run folder OUT gets run.json (the settings), metrics.jsonl (one line per
step), loss.png (the loss curve), checkpoints/ (weights, optimizer moments,
random states and data position: --resume continues bit for bit) and, at the
end, model/ (weights + tokenizer, for `lmlab generate OUT/model`) and
strategy.json (what each process held, beside the memory plan).

With --nproc N (or under `torchrun --nproc_per_node N`) the same command
trains in N processes (gloo on CPU, NCCL on GPUs): distributed data
parallelism, or with --strategy fsdp ZeRO sharding of the weights, gradients
and AdamW states (--zero 1|2|3, --sharding-factor, --offload cpu); checkpoints
are then sharded (`lmlab consolidate` merges one). --batch-size stays the
global batch, so the loss curve does not depend on N.

examples:
  lmlab pretrain --out runs/stories
  lmlab pretrain --arch encoder --steps 300 --out runs/bert-stories
  lmlab pretrain --data input.txt --tokenizer char --set n_layer=4 --set d_model=128 \\
      --seq-len 64 --batch-size 12 --steps 2000 --beta2 0.99 --out runs/shakespeare
"""


TRAIN = TrainConfig()  # the training defaults, written once (in the dataclass)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("pretrain", help="pre-train a model from scratch (CLM, MLM or span corruption)",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = p.add_argument_group("model")
    model.add_argument("--arch", choices=ARCHS,
                       help="architecture, which decides the objective (default: the preset's, else decoder)")
    model.add_argument("--preset", help="named configuration to start from (default: "
                       + ", ".join(f"{v} for {k}" for k, v in DEFAULT_PRESETS.items()) + "); see `lmlab models`")
    model.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", dest="overrides",
                       help="change one model config field, e.g. --set n_layer=4 --set dropout=0.1 (repeatable); "
                            "vocab_size and the special token ids come from the tokenizer")
    data = p.add_argument_group("data")
    data.add_argument("--data", nargs="+", metavar="PATH",
                      help="prepared dataset folders and/or raw corpus files or folders (default: the shipped corpus)")
    data.add_argument("--mix", metavar="NAME=W,...",
                      help="sampling weight of each dataset, summing to 1, e.g. finance=0.51,general=0.49 "
                           "(default: in proportion to their sizes)")
    data.add_argument("--tokenizer", default=field_default(PretrainSettings, "tokenizer"), metavar="TOK",
                      help="for raw text: 'bpe' learns a byte-level BPE vocabulary from the corpus, 'char' uses one "
                           "token per character, or give a tokenizer file/folder (default: %(default)s)")
    data.add_argument("--vocab-size", type=int, default=field_default(PretrainSettings, "vocab_size"),
                      help="BPE vocabulary size (default: %(default)s)")
    data.add_argument("--text-field", default=field_default(PretrainSettings, "text_field"), help="field/column holding the text in .jsonl/.csv/.parquet")
    data.add_argument("--txt-split", choices=TXT_SPLITS, default=field_default(PretrainSettings, "txt_split"),
                      help="what a document is in a .txt file: the whole file, or each block between blank lines; "
                           "cleaning and deduplication judge documents one by one (default: %(default)s)")
    data.add_argument("--seq-len", type=int,
                      help="tokens per training sequence, at most the model's context (default: the prepared "
                           "data's, else 128)")
    optim = p.add_argument_group("optimization")
    optim.add_argument("--steps", type=int, default=TRAIN.steps, help="optimizer steps (default: %(default)s)")
    optim.add_argument("--batch-size", type=int, default=TRAIN.batch_size,
                       help="sequences per optimizer step, over all processes and micro-batches (default: %(default)s)")
    optim.add_argument("--grad-accum", type=int, default=TRAIN.grad_accum,
                       help="micro-batches per step: gradients add up over them before the update, so a big batch "
                            "fits in less memory (default: %(default)s)")
    optim.add_argument("--lr", type=float, default=TRAIN.lr, help="peak learning rate (default: %(default)s)")
    optim.add_argument("--min-lr", type=float, help="learning rate at the end of the cosine decay (default: lr/10)")
    optim.add_argument("--warmup", type=int, default=TRAIN.warmup,
                       help="steps of linear learning-rate warmup from ~0 to --lr (default: %(default)s)")
    optim.add_argument("--weight-decay", type=float, default=TRAIN.weight_decay,
                       help="AdamW decoupled weight decay, on matrices and embeddings only (default: %(default)s)")
    optim.add_argument("--beta1", type=float, default=TRAIN.beta1,
                       help="Adam momentum coefficient (default: %(default)s)")
    optim.add_argument("--beta2", type=float, default=TRAIN.beta2,
                       help="Adam second-moment coefficient (default: %(default)s; nanoGPT uses 0.99 for small batches)")
    optim.add_argument("--clip", type=float, default=TRAIN.clip,
                       help="clip the gradient's global L2 norm to this; 0 turns clipping off (default: %(default)s)")
    optim.add_argument("--dtype", choices=list(DTYPES), default=TRAIN.dtype,
                       help="fp32, or bf16 autocast: matrix multiplies in bfloat16, weights and optimizer in fp32")
    optim.add_argument("--seed", type=int, default=TRAIN.seed, help="seed of the weights, data order, masks, dropout")
    optim.add_argument("--skip-nonfinite", type=int, default=TRAIN.skip_nonfinite, metavar="N",
                       help="skip up to N steps whose loss or gradient norm is NaN or infinite (no update, counted "
                            "in metrics.jsonl as skipped_steps), as large runs do; beyond N, or with the default "
                            "0, a non-finite step stops the run with an error, keeping the last checkpoint")
    optim.add_argument("--qat", choices=GRANULARITIES,
                       help="quantization-aware training: the forward pass sees int8 (absmax) weights with one "
                            "scale per tensor, output channel or group, the backward pass lets gradients through "
                            "unchanged (straight-through estimator), so `lmlab quantize` loses less afterwards")
    run = p.add_argument_group("run")
    run.add_argument("--out", required=True, metavar="DIR", help="run folder; an existing different run is refused")
    add_logger_argument(run)
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its last checkpoint (--steps may be raised); a finished "
                          "run is left as it is")
    run.add_argument("--eval-every", type=int, default=TRAIN.eval_every,
                     help="steps between validation loss/perplexity measurements and checkpoints (default: %(default)s)")
    run.add_argument("--eval-batches", type=int, default=TRAIN.eval_batches,
                     help="validation batches per evaluation, a fixed sample (default: %(default)s)")
    run.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: --eval-every)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_parallel_options(p, "pretrain")
    p.set_defaults(func=check_applies(p, RULES, run_pretrain))


RULES = (
    Applies("--vocab-size", lambda a: a.tokenizer == BPE,
            "sizes the BPE vocabulary learned with --tokenizer bpe; it does nothing with another tokenizer"),
    *(Applies(option, lambda a: bool(a.data), "only applies to raw corpus files given with --data")
      for option in ("--text-field", "--txt-split")),
)


def parse_overrides(items: list[str]) -> dict:
    """FIELD=VALUE strings into typed ModelConfig changes (values read as JSON, else as text)."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    changes = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise LmlabError(f"--set takes FIELD=VALUE, not {item!r}")
        if name not in fields:
            raise LmlabError(f"--set: unknown model config field {name!r}{did_you_mean(name, fields)}")
        if name in ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "arch"):
            raise LmlabError(f"--set {name}: this field comes from the tokenizer or --arch, not from --set")
        try:
            changes[name] = json.loads(value)
        except json.JSONDecodeError:
            changes[name] = value
    return changes


def run_pretrain(args: argparse.Namespace) -> int:
    from lmlab.training.distributed import process_group
    from lmlab.training.launch import relaunch

    if args.nproc is not None:
        return relaunch(args.nproc, run_folder=args.out)
    train = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr, min_lr=args.min_lr,
        warmup=args.warmup, weight_decay=args.weight_decay, beta1=args.beta1, beta2=args.beta2,
        clip=args.clip or None, dtype=args.dtype, eval_every=args.eval_every, eval_batches=args.eval_batches,
        checkpoint_every=args.checkpoint_every, seed=args.seed, progress=not args.no_progress,
        parallel=parallel_config(args), qat=args.qat, skip_nonfinite=args.skip_nonfinite, logger=args.logger,
    )
    settings = PretrainSettings(
        out=args.out, arch=args.arch, preset=args.preset, overrides=parse_overrides(args.overrides),
        data=args.data or [], mix=parse_mix(args.mix) if args.mix else None, tokenizer=args.tokenizer,
        vocab_size=args.vocab_size, seq_len=args.seq_len, text_field=args.text_field, txt_split=args.txt_split,
        resume=args.resume,
        train=train, progress=not args.no_progress,
    )
    with process_group() as env, errors_said_by_rank_zero(env):
        result = pretrain(settings, env)
    if not env.is_main or result.already_done:
        return 0 if not result.stopped_early else 130
    print(f"trained to step {result.steps}: {result.tokens:,} tokens in {result.train_seconds:.1f} s "
          f"({result.wall_seconds:.1f} s wall), {result.tokens_per_s:,.0f} tokens/s")
    print(f"model FLOPs utilization {result.mfu:.1%}: {format_flops(result.model_flops_per_s)} of "
          f"{format_flops(result.peak_flops_per_s)} (measured matrix-multiply peak)")
    if result.val_loss is not None:
        print(f"final train loss {result.train_loss:.4f}, validation loss {result.val_loss:.4f} "
              f"(perplexity {result.val_perplexity:.2f})")
    print(f"loss curve: {result.out / 'loss.png'}, log: {result.out / 'metrics.jsonl'}")
    if result.stopped_early:
        print(f"stopped early; continue with: lmlab pretrain ... --out {result.out} --resume")
        return 130
    print(f"model: {result.model_dir}")
    return 0


def format_flops(flops_per_s: float) -> str:
    return f"{flops_per_s / 1e9:,.2f} GFLOP/s"
