"""`lmlab align`: align a language model with human preferences.

A thin shell over `lmlab.finetuning.recipe.finetune` with the DPO objective (`lmlab.alignment.dpo`), and over
`lmlab.alignment.rlhf.align_ppo` (RLHF with PPO).
"""

from __future__ import annotations

import argparse

from lmlab.alignment.rlhf import DEFAULT_LR as PPO_LR
from lmlab.alignment.rlhf import PPOSettings, align_ppo
from lmlab.cli.options import Applies, check_applies
from lmlab.errors import LmlabError
from lmlab.data.finetune_data import DataFormat
from lmlab.finetuning.recipe import FinetuneSettings, finetune
from lmlab.hub.resolve import DEFAULT_MODEL
from lmlab.training.trainer import DTYPES

METHODS = ("dpo", "ppo")
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
  --method ppo   RLHF with PPO (Ziegler et al. 2019; Ouyang et al. 2022): the
                 model (LoRA) answers --prompts by sampling, the reward model
                 (--reward, from `lmlab finetune --task reward`) scores each
                 answer, a per-token KL penalty (--kl-coef, adapted towards
                 --target-kl nats per answer) keeps it near the reference (the
                 model with its adapters off), a value head (started from the
                 reward model's scalar head, or --value's) estimates returns,
                 GAE gives advantages, and --ppo-epochs clipped PPO passes
                 update the adapters and the value head.

The data is preference pairs (.jsonl, .json or .csv): "chosen" and "rejected"
whole conversations as Anthropic's HH-RLHF stores them ("\\n\\nHuman: ...
\\n\\nAssistant: ..."; the turns both share are the prompt), or "prompt",
"chosen", "rejected". Only the answers are scored. Evaluations report what TRL
logs: the implicit rewards beta * log(pi/pi_ref) of both answers, their accuracy
(chosen above rejected) and margin, the log-probabilities, and the KL divergence
to the reference per answer token (LoRA).

PPO's prompts (--prompts: .jsonl, .json or .csv) are a "prompt" field (text or
chat messages) per record, or HH-RLHF "chosen"/"rejected" conversations (their
shared turns). Each step logs the mean reward, KL, entropy, losses and one
sampled answer; OUT gets metrics.jsonl, ppo.png (reward and KL per step),
ppo.json, model/ (adapters merged), adapter/, value_head/ and checkpoints/
(every --checkpoint-every steps; --resume continues from the last one).

DPO's OUT gets the trainer's run files (run.json, metrics.jsonl, loss.png,
checkpoints/, --resume continues), finetune.json (settings, scores, times,
memory), model/ (the aligned model) and adapter/ (LoRA).

examples:
  lmlab align --method dpo --data hh_harmless.jsonl --beta 0.1 --steps 200 --out runs/dpo
  lmlab align smollm2-135m-instruct --method dpo --data prefs.jsonl --weights full --lr 5e-7 --out runs/dpo-full
  lmlab align --method ppo --reward runs/rm/model --prompts prompts.jsonl --steps 30 --out runs/ppo
"""

PPO = PPOSettings(model="", reward="", prompts="", out="")  # PPO's defaults, written once (in the dataclass)
PPO_OPTIONS = (  # option, type, metavar, help: each fills the PPOSettings field of its name
    ("--max-prompt-length", int, "N", "tokens of a prompt kept (its end)"),
    ("--max-new-tokens", int, "N", "longest sampled answer"),
    ("--ppo-epochs", int, "N", "PPO passes over each batch of rollouts"),
    ("--mini-batches", int, "N", "optimizer steps per PPO pass"),
    ("--kl-coef", float, "C", "initial weight of the per-token KL penalty"),
    ("--target-kl", float, "NATS", "KL per answer the coefficient is adapted towards; 0 keeps it fixed"),
    ("--kl-horizon", int, "N", "rollouts over which the coefficient moves at most 20%% (Ziegler et al. 2019); "
     "shorter lets it act within a short run"),
    ("--gamma", float, "G", "discount"),
    ("--lam", float, "L", "GAE's lambda"),
    ("--clip-range", float, "EPS", "PPO's ratio clip epsilon"),
    ("--vf-coef", float, "C", "weight of the value loss"),
    ("--checkpoint-every", int, "N", "steps between checkpoints (--resume continues from the last)"),
)


def _dpo(args: argparse.Namespace) -> bool:
    return args.method == "dpo"


def _ppo(args: argparse.Namespace) -> bool:
    return args.method == "ppo"


RULES = (
    *(Applies(option, _dpo, "is an option of --method dpo; drop it for ppo", name) for option, name in (
        ("--data", None), ("--val", None), ("--val-fraction", None), ("--beta", None), ("--max-length", None),
        ("--grad-accum", None), ("--eval-every", None))),
    Applies("--weights", _dpo, "full: PPO trains LoRA adapters here (the reference is the model with its adapters "
            "off); drop --weights"),
    *(Applies(option, _ppo, "is an option of --method ppo; drop it for dpo") for option in (
        "--reward", "--value", "--prompts", "--max-prompt-length", "--max-new-tokens", "--ppo-epochs",
        "--mini-batches", "--kl-coef", "--target-kl", "--gamma", "--lam", "--clip-range", "--vf-coef",
        "--checkpoint-every")),
)



def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("align", help="align a language model with preference pairs (DPO)",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help=f"the language model to align (default: {DEFAULT_MODEL})")
    p.add_argument("--method", choices=METHODS, default="dpo", help="the alignment method (default: dpo)")
    p.add_argument("--data", metavar="FILE", help="dpo: preference pairs (.jsonl, .json or .csv)")
    p.add_argument("--val", metavar="FILE", help="held-out pairs (default: hold out --val-fraction of --data)")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                   help="share of --data held out when there is no --val (default: 0.1)")
    p.add_argument("--beta", type=float, default=0.1, metavar="B",
                   help="DPO's beta: the weight of the tie to the reference model; smaller lets the model move "
                        "further (default: 0.1, as the paper and TRL)")
    ppo = p.add_argument_group("ppo")
    ppo.add_argument("--reward", metavar="MODEL", help="the reward model (a scalar head: lmlab finetune --task reward)")
    ppo.add_argument("--value", metavar="MODEL", help="the model whose scalar head starts the value head and whose "
                     "hidden states it reads (default: the reward model, as Ouyang et al. 2022)")
    ppo.add_argument("--prompts", metavar="FILE", help="prompts to answer (.jsonl, .json or .csv)")
    for option, kind, metavar, text in PPO_OPTIONS:
        ppo.add_argument(option, type=kind, default=getattr(PPO, option[2:].replace("-", "_")), metavar=metavar,
                         help=f"{text} (default: %(default)s)")
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
    length.add_argument("--epochs", type=float, default=PPO.epochs, metavar="E",
                        help="passes over the pairs or prompts (default: %(default)s)")
    length.add_argument("--steps", type=int, metavar="N", help="optimizer steps, instead of --epochs")
    p.add_argument("--lr", type=float, metavar="LR", help="peak learning rate (default: dpo "
                   + ", ".join(f"{v:g} for {k}" for k, v in DEFAULT_LR.items()) + f"; ppo {PPO_LR:g})")
    p.add_argument("--batch-size", type=int, default=PPO.batch_size, metavar="B",
                   help="pairs per optimizer step (dpo), prompts per PPO step (default: %(default)s)")
    p.add_argument("--grad-accum", type=int, default=1, metavar="N", help="micro-batches per step (default: 1)")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="fp32, or bf16 autocast")
    p.add_argument("--eval-every", type=int, metavar="N", help="steps between evaluations (default: one epoch)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, data order, adapters")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty, unless --resume)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=check_applies(p, RULES, run_align))


def settings_from(args: argparse.Namespace) -> FinetuneSettings:
    fmt = DataFormat(task=args.method, prompt_field=args.prompt_field, chat=args.chat, max_length=args.max_length)
    return FinetuneSettings(
        model=args.model, data=args.data, out=args.out, validation=args.val, validation_fraction=args.val_fraction,
        format=fmt, method=args.weights, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
        lora_targets=args.lora_targets, epochs=args.epochs, steps=args.steps,
        lr=args.lr or DEFAULT_LR[args.weights], batch_size=args.batch_size, grad_accum=args.grad_accum,
        dtype=args.dtype, eval_metric="accuracy", eval_every=args.eval_every, seed=args.seed,
        progress=not args.no_progress, resume=args.resume, beta=args.beta, eval_samples=10**9,
    )


def ppo_settings_from(args: argparse.Namespace) -> PPOSettings:
    return PPOSettings(
        model=args.model, reward=args.reward, prompts=args.prompts, out=args.out, value=args.value,
        prompt_field=args.prompt_field, chat=args.chat, max_prompt_length=args.max_prompt_length,
        max_new_tokens=args.max_new_tokens, epochs=args.epochs, steps=args.steps, batch_size=args.batch_size,
        mini_batches=args.mini_batches, ppo_epochs=args.ppo_epochs, lr=args.lr, lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha, lora_targets=args.lora_targets, kl_coef=args.kl_coef, target_kl=args.target_kl,
        kl_horizon=args.kl_horizon, gamma=args.gamma, lam=args.lam, clip_range=args.clip_range, vf_coef=args.vf_coef,
        dtype=args.dtype, seed=args.seed, checkpoint_every=args.checkpoint_every, resume=args.resume, progress=not args.no_progress,
    )


def run_align(args: argparse.Namespace) -> int:
    if args.method == "ppo":
        if args.reward is None:
            raise LmlabError("--method ppo needs --reward: a reward model (lmlab finetune MODEL --task reward)")
        if args.prompts is None:
            raise LmlabError("--method ppo needs --prompts: a file of prompts to answer")
        ppo = align_ppo(ppo_settings_from(args))
        last = ppo.history[-1]
        print(f"{ppo.steps} PPO steps in {ppo.train_seconds:.0f} s (wall {ppo.wall_seconds:.0f} s), peak memory "
              f"{ppo.peak_memory_bytes / 1e9:.2f} GB; last step: reward {last['reward']:.3f}, KL {last['kl']:.3f}; "
              f"saved {ppo.model_dir} and {ppo.adapter_dir}")
        return 0
    if args.data is None:
        raise LmlabError("--method dpo needs --data (preference pairs)")
    result = finetune(settings_from(args))
    if not result.already_done:
        saved = [str(p) for p in (result.model_dir, result.adapter_dir) if p is not None]
        print(f"{result.steps} steps in {result.train_seconds:.0f} s (wall {result.wall_seconds:.0f} s), peak memory "
              f"{result.peak_memory_bytes / 1e9:.2f} GB; saved {' and '.join(saved)}")
    return 0
