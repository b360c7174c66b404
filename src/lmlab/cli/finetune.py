"""`lmlab finetune`: adapt a pre-trained model to a task with full fine-tuning or LoRA.

A thin shell over `lmlab.finetuning.recipe.finetune`.
"""

from __future__ import annotations

import argparse

from lmlab.cli.generate import unescape
from lmlab.cli.options import Applies, check_applies, field_default
from lmlab.cli.parallel import add_parallel_options, errors_said_by_rank_zero, parallel_config
from lmlab.cli.runs import add_logger_argument
from lmlab.data.finetune_data import TASKS, DataFormat
from lmlab.finetuning.evaluate import METRICS
from lmlab.finetuning.recipe import DEFAULT_LR, METHODS, FinetuneSettings, finetune
from lmlab.hub.resolve import DEFAULT_MODEL
from lmlab.training.trainer import DTYPES

DESCRIPTION = """\
Fine-tune a pre-trained model on your data: keep training it, on examples of
the task, starting from what pre-training taught it.

  --task generation      prompt-completion records (--prompt-field, --completion-field,
                         --template) or chat records (a "messages" list); the loss is on
                         the completion / the assistant's turns only
  --task classification  text-label records (--text-field, --label-field) or `LABEL TEXT`
                         lines (.txt, as SST-2); a new classification head replaces the
                         language-modelling head
  --task pair-classification
                         sentence pairs with a label (--text-field, --pair-field,
                         --label-field), e.g. NLI: premise, hypothesis, entailment /
                         neutral / contradiction; the model for zero-shot classification
  --task token-classification
                         a CoNLL file (a token TAB its BIO tag per line, blank line between
                         sentences) or records with "tokens" and "tags" lists (NER)
  --task question-answering
                         a SQuAD v1.1 JSON file; a start/end head learns to point at the
                         answer's span in the context (extractive QA)
  --task reward          preference pairs: "chosen" and "rejected" conversations as
                         HH-RLHF stores them, or "prompt", "chosen", "rejected"; a scalar
                         head learns r(x, y) with the Bradley-Terry loss
                         -log sigmoid(r(x, chosen) - r(x, rejected)); evaluations report
                         pairwise accuracy and margin (for `lmlab align --method ppo`)

  --method full   every weight trains (gradients and AdamW states for all of them)
  --method lora   the model is frozen; small low-rank matrices B·A are learned next to
                  the weights the --lora-targets name (Hu et al. 2021, "LoRA"), about
                  1% of the parameters

The data is a .jsonl, .json or .csv file. Without --val a seeded --val-fraction
of it is held out. Every --eval-every steps the validation loss is measured
(and ROUGE, accuracy or F1 on --eval-samples examples with --eval-metric);
--early-stopping N stops after N evaluations without improvement and keeps the
best weights.

OUT gets the trainer's run files (run.json, metrics.jsonl, loss.png,
checkpoints/), finetune.json (settings, scores, times, memory) and
  model/     the fine-tuned model (LoRA: the adapter merged into the weights),
             for `lmlab generate OUT/model`, `lmlab evaluate OUT/model`, export
  adapter/   LoRA only: the adapter alone (adapter.safetensors + adapter.json)

examples:
  lmlab finetune --data train.jsonl --out runs/ft                       # embedded SmolLM2, LoRA on q,v
  lmlab finetune --data dialogsum.jsonl --prompt-field dialogue --completion-field summary \\
      --instruction "Summarize the following conversation." --method full --lr 5e-5 --epochs 2 --out runs/sum
  lmlab finetune minilm-l6 --task classification --data reviews.csv --method full --lr 1e-4 \\
      --eval-metric accuracy --out runs/reviews
  lmlab finetune minilm-l6 --task token-classification --data wnut17/train.conll --val wnut17/dev.conll \\
      --method full --lr 5e-5 --epochs 3 --out runs/ner          # then: lmlab run ner runs/ner/model
  lmlab finetune --task reward --data hh_harmless.jsonl --lora-targets all-linear --lr 1e-4 \
      --eval-metric accuracy --out runs/rm                        # then: lmlab align --method ppo --reward runs/rm/model
"""


FORMAT = DataFormat()  # the data-format defaults, written once (in the dataclass)


def _default(name: str) -> object:
    """The default of FinetuneSettings' field `name`, written once, in the dataclass."""
    return field_default(FinetuneSettings, name)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("finetune", help="fine-tune a pre-trained model (full or LoRA) for generation or "
                              "classification", description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help=f"the pre-trained model: embedded name, checkpoint folder, .gguf file or hub id "
                        f"(default: {DEFAULT_MODEL})")
    data = p.add_argument_group("data")
    data.add_argument("--data", required=True, metavar="FILE", help="training records (.jsonl, .json or .csv)")
    data.add_argument("--val", metavar="FILE", help="validation records (default: hold out --val-fraction of --data)")
    data.add_argument("--val-fraction", type=float, default=_default("validation_fraction"), metavar="F",
                      help="share of --data held out for validation when there is no --val (default: %(default)s)")
    data.add_argument("--task", choices=[t for t in TASKS if t != "dpo"], default=FORMAT.task,
                      help="generation: learn to write the completion; classification, pair-classification, "
                           "token-classification, question-answering: train the head `lmlab run` uses for the task; "
                           "reward: a reward model from preference pairs (default: %(default)s)")
    data.add_argument("--prompt-field", default=FORMAT.prompt_field, metavar="NAME",
                      help="generation: the field holding the input (default: %(default)s)")
    data.add_argument("--completion-field", default=FORMAT.completion_field, metavar="NAME",
                      help="generation: the field holding the answer to learn (default: %(default)s)")
    data.add_argument("--template", metavar="TEXT",
                      help="generation: how a record becomes the prompt, a format string over its fields, \\n for a "
                           "new line, e.g. 'Dialogue:\\n\\n{dialogue}\\n\\nWhat was going on?\\n' (default: the "
                           "prompt field alone)")
    data.add_argument("--instruction", default=FORMAT.instruction, metavar="TEXT",
                      help="generation: text put before each prompt (a system turn in chat format)")
    data.add_argument("--chat", action=argparse.BooleanOptionalAction, default=FORMAT.chat,
                      help="generation: write prompts with the model's chat template, as an instruction-tuned "
                           "model was trained (default: when the tokenizer has one)")
    data.add_argument("--text-field", default=FORMAT.text_field, metavar="NAME",
                      help="classification: the field holding the text (default: %(default)s)")
    data.add_argument("--pair-field", default=FORMAT.pair_field, metavar="NAME",
                      help="pair-classification: the field holding the second text (default: %(default)s)")
    data.add_argument("--label-field", default=FORMAT.label_field, metavar="NAME",
                      help="classification: the field holding the label name (default: %(default)s)")
    data.add_argument("--max-length", type=int, default=FORMAT.max_length, metavar="N",
                      help="longest sequence in tokens; longer inputs are cut (default: %(default)s)")
    data.add_argument("--packing", action="store_true",
                      help="generation: join short examples into rows of up to --max-length tokens, so batches "
                           "hold less padding")
    method = p.add_argument_group("method")
    method.add_argument("--method", choices=METHODS, default=_default("method"),
                        help="full: train every weight; lora: train low-rank adapters only (default: %(default)s)")
    method.add_argument("--lora-rank", type=int, default=_default("lora_rank"), metavar="R",
                        help="rank r of each adapter B·A: r·(d_in + d_out) parameters per matrix "
                             "(default: %(default)s)")
    method.add_argument("--lora-alpha", type=float, default=_default("lora_alpha"), metavar="A",
                        help="scale of the update, which is multiplied by alpha/r (default: %(default)s)")
    method.add_argument("--lora-dropout", type=float, default=_default("lora_dropout"), metavar="P",
                        help="dropout on the adapter's input during training (default: %(default)s)")
    method.add_argument("--lora-targets", default=_default("lora_targets"), metavar="NAMES",
                        help="which linear layers get adapters: q,k,v,o (attention projections), up,gate,down "
                             "(feed-forward), full names such as attn.q_proj or head.proj, or all-linear "
                             "(default: %(default)s, as in the LoRA paper)")
    optim = p.add_argument_group("training")
    length = optim.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, default=_default("epochs"), metavar="E",
                        help="passes over the training data (default: %(default)s unless --steps is given)")
    length.add_argument("--steps", type=int, default=_default("steps"), metavar="N",
                        help="optimizer steps, instead of --epochs")
    optim.add_argument("--lr", type=float, default=_default("lr"), metavar="LR",
                       help="peak learning rate, after a 5%% warmup, then cosine decay to lr/10 (default: "
                            + ", ".join(f"{v:g} for {k}" for k, v in DEFAULT_LR.items()) + ")")
    optim.add_argument("--batch-size", type=int, default=_default("batch_size"), metavar="B",
                       help="examples per optimizer step (default: %(default)s)")
    optim.add_argument("--grad-accum", type=int, default=_default("grad_accum"), metavar="N",
                       help="micro-batches per step: gradients add up over them, so a batch fits in less memory "
                            "(default: %(default)s)")
    optim.add_argument("--weight-decay", type=float, default=_default("weight_decay"), metavar="W",
                       help="AdamW decoupled weight decay on matrices (default: %(default)s)")
    optim.add_argument("--dtype", choices=list(DTYPES), default=_default("dtype"),
                       help="fp32, or bf16 autocast: matrix multiplies in bfloat16, weights and AdamW in fp32")
    optim.add_argument("--grad-checkpointing", action="store_true",
                       help="keep only each block's input in the forward pass and recompute the rest in the "
                            "backward pass: less activation memory for about a third more compute")
    optim.add_argument("--seed", type=int, default=_default("seed"),
                       help="seed of the split, data order, new weights, dropout (default: %(default)s)")
    optim.add_argument("--skip-nonfinite", type=int, default=_default("skip_nonfinite"), metavar="N",
                       help="skip up to N steps whose loss or gradient norm is NaN or infinite (no update); beyond "
                            "N, or with the default 0, a non-finite step stops the run with an error")
    evaluation = p.add_argument_group("evaluation")
    evaluation.add_argument("--eval-metric", choices=list(METRICS), default=_default("eval_metric"),
                            help="what evaluations watch: loss (validation loss), rouge (ROUGE-1 of greedy answers; "
                                 "generation), accuracy or f1 (macro-averaged; classification) (default: %(default)s)")
    evaluation.add_argument("--eval-every", type=int, default=_default("eval_every"), metavar="N",
                            help="steps between evaluations (default: one epoch)")
    evaluation.add_argument("--eval-samples", type=int, default=_default("eval_samples"), metavar="N",
                            help="validation examples scored with --eval-metric (the loss uses all; "
                                 "default: %(default)s)")
    evaluation.add_argument("--early-stopping", type=int, default=_default("early_stopping"), metavar="N",
                            help="stop after N evaluations without a better --eval-metric, keeping the best weights")
    evaluation.add_argument("--max-new-tokens", type=int, default=_default("max_new_tokens"), metavar="N",
                            help="longest generated answer when scoring with rouge (default: %(default)s)")
    out = p.add_argument_group("output")
    out.add_argument("--out", required=True, metavar="DIR",
                     help="output folder (must be new or empty, unless --resume)")
    out.add_argument("--resume", action="store_true",
                     help="continue the fine-tuning run in --out from its last checkpoint, with the same settings "
                          "(--steps or --epochs may be raised); a finished run is left as it is")
    add_logger_argument(out)
    out.add_argument("--save-adapter-only", action="store_true",
                     help="LoRA: write only adapter/ (a few MB), not the merged model/")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_parallel_options(p, "finetune")
    p.set_defaults(func=check_applies(p, RULES, run_finetune))


RULES = (
    *(Applies(option, lambda a: a.task == "generation", "only applies to --task generation")
      for option in ("--completion-field", "--template", "--instruction", "--packing")),
    *(Applies(option, lambda a: a.task in ("generation", "reward"), "only applies to --task generation or reward")
      for option in ("--prompt-field", "--chat")),
    *(Applies(option, lambda a: a.task == "classification", "only applies to --task classification")
      for option in ("--text-field", "--label-field")),
    *(Applies(option, lambda a: a.method == "lora", "only applies to --method lora (full fine-tuning has no adapters)")
      for option in ("--lora-rank", "--lora-alpha", "--lora-dropout", "--lora-targets")),
    Applies("--max-new-tokens", lambda a: a.eval_metric == "rouge",
            "sets the length of the answers scored with --eval-metric rouge; it does nothing otherwise"),
    Applies("--eval-samples", lambda a: a.eval_metric != "loss",
            "counts the examples scored with --eval-metric rouge, accuracy or f1; the loss uses every example"),
    Applies("--val-fraction", lambda a: a.val is None, "does nothing with --val: the validation records are that file"),
)


def settings_from(args: argparse.Namespace) -> FinetuneSettings:
    fmt = DataFormat(
        task=args.task, prompt_field=args.prompt_field, completion_field=args.completion_field,
        template=unescape(args.template) if args.template else None, instruction=unescape(args.instruction), text_field=args.text_field,
        pair_field=args.pair_field, label_field=args.label_field, chat=args.chat, max_length=args.max_length,
    )
    return FinetuneSettings(
        model=args.model, data=args.data, out=args.out, validation=args.val, validation_fraction=args.val_fraction,
        format=fmt, method=args.method, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout, lora_targets=args.lora_targets,
        epochs=args.epochs, steps=args.steps, lr=args.lr,
        batch_size=args.batch_size, grad_accum=args.grad_accum, weight_decay=args.weight_decay, dtype=args.dtype,
        gradient_checkpointing=args.grad_checkpointing, packing=args.packing, eval_metric=args.eval_metric,
        eval_every=args.eval_every, eval_samples=args.eval_samples, early_stopping=args.early_stopping,
        max_new_tokens=args.max_new_tokens, save_adapter_only=args.save_adapter_only, seed=args.seed,
        progress=not args.no_progress, parallel=parallel_config(args), resume=args.resume,
        skip_nonfinite=args.skip_nonfinite, logger=args.logger,
    )


def run_finetune(args: argparse.Namespace) -> int:
    from lmlab.training.distributed import process_group
    from lmlab.training.launch import relaunch

    if args.nproc is not None:
        return relaunch(args.nproc, run_folder=args.out)
    settings = settings_from(args)
    with process_group() as env, errors_said_by_rank_zero(env):
        result = finetune(settings, env)
    if env.is_main and not result.already_done:
        saved = [str(p) for p in (result.model_dir, result.adapter_dir) if p is not None]
        print(f"{result.steps} steps in {result.train_seconds:.0f} s (wall {result.wall_seconds:.0f} s), peak memory "
              f"{result.peak_memory_bytes / 1e9:.2f} GB; saved {' and '.join(saved)}")
    return 0
