"""The fine-tuning recipe: from a pre-trained model and a data file to a fine-tuned model, top to bottom.

The course's workflow (choose a model; prepare and tokenize the data; set the
training arguments; train; evaluate; save and share), in the order `finetune` runs it:

1. load the pre-trained model and its tokenizer (any reference `load_model` takes);
2. read, check, split and tokenize the data (`lmlab.data.finetune_data`);
3. classification: replace the language-modelling head with a new classification head;
4. choose what trains: every weight (full fine-tuning) or low-rank adapters on
   a frozen model (LoRA, Hu et al. 2021: `lmlab.models.lora`), and print the
   trainable share and the planned memory;
5. train with lmlab's trainer (AdamW, warmup + cosine schedule, clipping, bf16
   autocast, checkpoints, DDP or ZeRO sharding: `lmlab.training.trainer`), evaluating every
   `eval_every` steps: validation loss, and ROUGE or accuracy/F1 on a sample
   when asked; early stopping keeps the best evaluation's weights;
6. score the final model on the validation set;
7. save: the whole model (full fine-tuning), or the adapter alone and the model
   with the adapter merged into its weights (LoRA), as lmlab checkpoints that
   every command loads and `lmlab.hub.checkpoint.export_hf` exports.

Default learning rates follow common practice: 2e-4 for LoRA (Hu et al. 2021,
Table 9, used 2e-4 to 5e-4 for GPT-2), 5e-5 for full fine-tuning (Devlin et
al. 2018, appendix A.3: 5e-5, 3e-5 or 2e-5).
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from lmlab.alignment.dpo import cache_reference_logps, check_policy, dpo_loss_sum
from lmlab.alignment.preferences import PairCollator, count_pairs, load_preferences
from lmlab.alignment.reward import REWARD_LABEL, reward_loss_sum
from lmlab.config import ModelConfig
from lmlab.data.finetune_data import PREFERENCE_TASKS, Collator, DataFormat, FinetuneData, load_data
from lmlab.errors import LmlabError
from lmlab.finetuning.evaluate import HEADLINE, Scores, check_metric, higher_is_better, score
from lmlab.finetuning.prepare import MemoryPlan, enable_gradient_checkpointing, plan_memory
from lmlab.hub.checkpoint import save_checkpoint
from lmlab.hub.model_card import CardFacts, EvalResult, run_card_facts, write_model_card
from lmlab.generation.incremental import padding_id
from lmlab.hub.adapters import base_reference
from lmlab.hub.resolve import load_model
from lmlab.io import remove_folder, write_json
from lmlab.planning.limits import check_fits
from lmlab.planning.measure import PeakMemory
from lmlab.planning.units import format_bytes
from lmlab.models.heads import attach_head
from lmlab.models.lora import apply_lora, count_parameters, merge_lora, save_adapter
from lmlab.tokenizers.base import TokenizerProtocol
from lmlab.training.distributed import DistEnv, run_on_main
from lmlab.training.fsdp import ParallelConfig
from lmlab.training.objectives import Objective
from lmlab.training.run_folder import open_run
from lmlab.training.trainer import StepMetrics, TrainConfig, Trainer, TrainResult

METHODS = ("full", "lora")
DEFAULT_LR = {"full": 5e-5, "lora": 2e-4}
WARMUP_SHARE = 0.05
SUMMARY_FILE = "finetune.json"
LOSS_UNITS = {  # what one counted target of each task is (training.objectives.loss_sum; alignment's losses)
    "classification": "nats per example", "pair-classification": "nats per example",
    "token-classification": "nats per tagged word", "question-answering": "nats per answer boundary",
    "reward": "nats per pair", "dpo": "nats per pair",
}
HEADS = {"classification": "sequence-classification", "pair-classification": "sequence-classification",
         "token-classification": "token-classification", "question-answering": "question-answering",
         "reward": "sequence-classification"}


@dataclass
class FinetuneSettings:
    """Everything `lmlab finetune` takes. `steps`, when given, replaces `epochs`; `lr=None` takes the method's
    default."""

    model: str
    data: str | Path
    out: str | Path
    validation: str | Path | None = None
    validation_fraction: float = 0.1
    format: DataFormat = field(default_factory=DataFormat)
    method: str = "lora"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_targets: str = "q,v"
    epochs: float = 3.0
    steps: int | None = None
    lr: float | None = None
    batch_size: int = 8
    grad_accum: int = 1
    weight_decay: float = 0.0
    dtype: str = "fp32"
    gradient_checkpointing: bool = False
    packing: bool = False
    eval_metric: str = "loss"
    eval_every: int | None = None  # default: once per epoch
    eval_samples: int = 50
    early_stopping: int | None = None  # patience, in evaluations
    max_new_tokens: int = 64
    save_adapter_only: bool = False
    seed: int = 0
    progress: bool = True
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # DDP or ZeRO over several processes
    resume: bool = False  # continue the run in `out` from its last checkpoint
    skip_nonfinite: int = 0  # steps with a non-finite loss skipped before the run stops (TrainConfig)
    logger: str = "jsonl"  # where step metrics also go: lmlab.training.loggers
    beta: float = 0.1  # dpo: the strength of the tie to the reference (lmlab.alignment.dpo)


@dataclass
class FinetuneResult:
    """How the fine-tune went and where its outputs are."""

    out: Path
    model_dir: Path | None
    adapter_dir: Path | None
    method: str
    task: str
    n_trainable: int
    n_total: int
    steps: int
    best_step: int | None
    stopped_early: bool
    scores: dict[str, float]
    history: list[dict[str, Any]]
    memory_plan: dict[str, float]
    train_seconds: float
    wall_seconds: float
    peak_memory_bytes: int  # resident memory above the process's before the model was loaded (0: unknown)
    already_done: bool = False  # resumed a finished run: nothing trained, nothing written

    @classmethod
    def load(cls, out: Path) -> FinetuneResult:
        """The result a finished run wrote to its finetune.json."""
        saved = json.loads((Path(out) / SUMMARY_FILE).read_text(encoding="utf-8"))
        fields = {k: saved[k] for k in cls.__dataclass_fields__ if k in saved}
        paths = {k: None if fields.get(k) is None else Path(fields[k]) for k in ("out", "model_dir", "adapter_dir")}
        return cls(**{**fields, **paths, "already_done": True})


def check_settings(s: FinetuneSettings) -> None:
    if s.method not in METHODS:
        raise LmlabError(f"fine-tuning method must be one of {', '.join(METHODS)}, not {s.method!r}")
    if s.steps is None and not 0 < s.epochs < math.inf:
        raise LmlabError(f"epochs must be positive, not {s.epochs:g}")
    for name in ("batch_size", "grad_accum", "eval_every", "max_new_tokens", "max_length", "lora_rank"):
        value = getattr(s, name) if name != "max_length" else s.format.max_length
        if value is not None and value < 1:
            raise LmlabError(f"{name.replace('_', ' ')} must be at least 1, not {value}")
    check_metric(s.eval_metric, s.format.task)
    if s.early_stopping is not None and s.early_stopping < 1:
        raise LmlabError(f"early-stopping patience must be at least 1 evaluation, not {s.early_stopping}")
    if s.eval_samples < 1:
        raise LmlabError(f"evaluation samples must be at least 1, not {s.eval_samples}")
    if s.beta <= 0:
        raise LmlabError(f"beta must be positive, not {s.beta:g}")
    if s.save_adapter_only and s.method != "lora":
        raise LmlabError("only a LoRA fine-tune has an adapter to save alone; drop --save-adapter-only")


def check_task_fits(task: str, config: ModelConfig, name: str) -> None:
    """Generation writes text token by token, which takes a decoder with a language-modelling head; an encoder
    (BERT-like) reads its whole input at once and can only learn to classify it. DPO trains a language model,
    not a reward model."""
    if task == "dpo":
        check_policy(config, name)
    if task == "generation" and (not config.has_decoder or config.head != "lm"):
        kind = "an encoder (BERT-like) model" if not config.has_decoder else f"a model with a {config.head} head"
        raise LmlabError(f"{name} is {kind}: it cannot write text, so it cannot be fine-tuned for generation; "
                         "use --task classification (text-label records), or a decoder such as smollm2-135m-instruct")


class EarlyStopping:
    """Score the model at each evaluation, remember the best, and stop after `patience` evaluations without
    improvement. With a patience, the best weights (the trainable tensors) are kept to restore at the end."""

    def __init__(self, settings: FinetuneSettings, data: FinetuneData, collator: Collator, tokenizer: TokenizerProtocol,
                 say) -> None:
        self.settings, self.data, self.collator, self.tokenizer, self.say = settings, data, collator, tokenizer, say
        self.metric = HEADLINE[settings.eval_metric]
        self.best: float | None = None
        self.best_step: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.misses = 0
        self.evaluations: list[dict[str, Any]] = []

    def __call__(self, metrics: StepMetrics, trainer: Trainer) -> None:
        if metrics.val_loss is None:
            return
        s = self.settings
        values = {"val_loss": metrics.val_loss}
        if s.eval_metric != "loss":
            values.update(score(trainer.model, self.tokenizer, self.data.validation, self.collator, self.data.task,
                                s.eval_metric, s.eval_samples, s.batch_size, s.max_new_tokens, s.dtype,
                                with_loss=False, beta=s.beta).values)
        value = values[self.metric]
        self.evaluations.append({"step": metrics.step, **values})
        better = self.best is None or (value > self.best if higher_is_better(s.eval_metric) else value < self.best)
        if better:
            self.best, self.best_step, self.misses = value, metrics.step, 0
            if s.early_stopping:
                self.best_state = {n: p.detach().clone() for n, p in trainer.model.named_parameters()
                                   if p.requires_grad}
        else:
            self.misses += 1
        if s.eval_metric != "loss" or s.early_stopping:  # the trainer prints the validation loss itself
            self.say(f"step {metrics.step}: {Scores(values).format()}" + ("" if better else
                     f" (best {self.metric} {self.best:.4f} at step {self.best_step})"))
        if s.early_stopping and self.misses >= s.early_stopping:
            self.say(f"early stopping: no better {self.metric} in {self.misses} evaluations")
            trainer.request_stop()

    def restore_best(self, model: torch.nn.Module) -> None:
        if self.best_state is None:
            return
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self.best_state.items():
                params[name].copy_(value)


def _training_length(s: FinetuneSettings, n_train: int) -> tuple[int, int]:
    """(steps, eval_every): epochs become steps of batch_size examples; evaluate once per epoch by default."""
    steps_per_epoch = max(1, math.ceil(n_train / s.batch_size))
    steps = s.steps if s.steps is not None else max(1, round(s.epochs * steps_per_epoch))
    if steps < 1:
        raise LmlabError(f"steps must be at least 1, not {steps}")
    return steps, s.eval_every or min(steps_per_epoch, steps)


def _identity(s: FinetuneSettings, train: TrainConfig) -> dict[str, Any]:
    settings = {k: v for k, v in asdict(s).items() if k not in ("out", "progress", "steps", "epochs", "eval_every",
                                                                 "eval_samples", "early_stopping", "parallel",
                                                                 "resume", "skip_nonfinite", "logger")}
    return {"kind": "finetune", **json.loads(json.dumps(settings, default=str)), "train": train.identity()}


def finetune(s: FinetuneSettings, env: DistEnv | None = None) -> FinetuneResult:
    """Fine-tune as `s` says; see the module docstring for the steps."""

    start = time.perf_counter()
    memory = PeakMemory()  # the process's resident memory before the model is loaded, and its peak after
    env = env or DistEnv()
    say = (lambda text: print(text, flush=True)) if env.is_main else (lambda text: None)
    check_settings(s)

    # 1. The pre-trained model and its tokenizer.
    loaded = load_model(s.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    say(f"model: {loaded.source}")
    check_task_fits(s.format.task, model.config, s.model)

    # 2. The data, in sequences no longer than the model's context window.
    fmt = s.format
    if fmt.max_length > model.config.max_seq_len:
        fmt = replace(fmt, max_length=model.config.max_seq_len)
        say(f"sequences cut to the model's context window of {fmt.max_length} tokens")
    if fmt.task in PREFERENCE_TASKS:
        if s.packing:
            raise LmlabError("packing joins generation examples; preference pairs are not packed")
        data = load_preferences(s.data, fmt, tokenizer, s.validation, s.validation_fraction, s.seed,
                                eos_id=model.config.eos_token_id)
    else:
        data = load_data(s.data, fmt, tokenizer, s.validation, s.validation_fraction, s.seed, s.packing,
                         eos_id=model.config.eos_token_id)
    say(f"data: {data.describe()}")
    if not data.validation and (s.early_stopping or s.eval_metric != "loss"):
        raise LmlabError("evaluation and early stopping need validation examples; give --val or a larger "
                         "--val-fraction")

    # 3. A task head replaces the language-modelling head.
    if data.task in HEADS:
        head = HEADS[data.task]
        attach_head(model, head, [REWARD_LABEL] if data.task == "reward" else data.labels, s.seed)
        say(f"new {head} head" + (f" for {len(data.labels)} labels: {', '.join(data.labels)}" if data.labels else ""))

    # 4. What trains, and the memory it takes.
    report = None
    trainable = ["head"] if data.task in HEADS else []
    if s.method == "lora":
        report = apply_lora(model, s.lora_targets, s.lora_rank, s.lora_alpha, s.lora_dropout, trainable, s.seed)
        say(report.format())
    n_trainable, n_total = count_parameters(model)
    say(f"trainable parameters: {n_trainable:,} of {n_total:,} ({n_trainable / n_total:.2%})")
    if s.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    micro_batch = s.batch_size // (env.world_size * s.grad_accum) or 1
    pad_id = padding_id(model, tokenizer)
    preference = data.task in PREFERENCE_TASKS
    if preference:  # a pair is two sequences: the chosen and the rejected answer
        collator = PairCollator(pad_id, scored="last" if data.task == "reward" else "completion")
    else:
        collator = Collator(data.task, pad_id)
    inputs = data.max_tokens - (data.task in ("generation", "dpo"))  # a last token only a target
    plan = plan_memory(model, micro_batch * (1 + preference), inputs, s.dtype, s.gradient_checkpointing, collator,
                       data.task, data.max_labelled)
    say(plan.format())
    check_fits("this fine-tune", plan.total, "choose a smaller --batch-size (or more --grad-accum), a shorter "
               "--max-length, --method lora or --grad-checkpointing")

    # 5. Train, evaluating as we go.
    steps, eval_every = _training_length(s, len(data.train))
    train_config = TrainConfig(
        steps=steps, batch_size=s.batch_size, grad_accum=s.grad_accum, lr=s.lr or DEFAULT_LR[s.method],
        warmup=round(WARMUP_SHARE * steps), weight_decay=s.weight_decay, beta2=0.999, dtype=s.dtype,
        eval_every=eval_every, eval_batches=None, checkpoint_every=steps, seed=s.seed, progress=s.progress,
        parallel=s.parallel, skip_nonfinite=s.skip_nonfinite, logger=s.logger,
    )
    train_config.check(env)  # before the run folder is made: a refused setting leaves nothing behind
    with run_on_main(lambda: open_run(s.out, _identity(s, train_config), s.resume), env) as run:
        objective = Objective(f"fine-tuning ({data.task}, {s.method})", lambda seed: collator,
                              unit=LOSS_UNITS.get(data.task, Objective.unit))
        if data.task == "reward":
            objective = Objective(f"reward model (Bradley-Terry, {s.method})", lambda seed: collator,
                                  reward_loss_sum, count_pairs, LOSS_UNITS["reward"])
        elif data.task == "dpo":
            cache_reference_logps(model, data.train + data.validation, pad_id, s.batch_size, s.dtype, s.progress)
            objective = Objective(f"DPO (beta {s.beta:g}, {s.method})", lambda seed: collator,
                                  functools.partial(dpo_loss_sum, beta=s.beta), count_pairs, LOSS_UNITS["dpo"])
        monitor = EarlyStopping(s, data, collator, tokenizer, say)
        trainer = Trainer(model, objective, {"train": data.train},
                          {"validation": data.validation} if data.validation else {}, train_config, run,
                          tokenizer=tokenizer, env=env, seq_len=data.max_tokens - 1, on_step=monitor,
                          plan_memory=False)
        trained = trainer.train()
        if trained.already_done and (run.path / SUMMARY_FILE).is_file():
            return FinetuneResult.load(run.path)
        monitor.restore_best(model)
        measured = memory.peak_bytes()
        if measured is not None:
            say(f"memory: planned {format_bytes(plan.total)}, measured peak {format_bytes(measured)} "
                f"({measured / plan.total:.2f} x the plan; resident memory above the process's before the model "
                "was loaded)")

        # 6. The final scores on the validation set.
        scores: dict[str, float] = {}
        if data.validation:
            kept_last = monitor.best_state is None and trained.val_loss is not None and not trained.stopped_early
            scores = score(model, tokenizer, data.validation, collator, data.task, s.eval_metric, s.eval_samples,
                           s.batch_size, s.max_new_tokens, s.dtype, with_loss=not kept_last, beta=s.beta).values
            if kept_last:  # the trainer measured the final weights' validation loss at its last step
                scores = {"val_loss": trained.val_loss, **scores}
            say(f"final ({'best step ' + str(monitor.best_step) if monitor.best_state else 'last step'}): "
                f"{Scores(scores).format()}")

        # 7. Save.
        model_dir, adapter_dir = run.path / "model", None
        model = trainer.strategy.whole_model(model)  # ZeRO-2/3: gathered from the shards, on rank 0
        if env.is_main:
            if report is not None:
                adapter_dir = save_adapter(model, run.path / "adapter", base_reference(s.model), report, trainable,
                                           overwrite=True)
            if s.save_adapter_only:
                remove_folder(model_dir)
                model_dir = None
            else:
                save_checkpoint(merge_lora(model) if report is not None else model, model_dir, tokenizer,
                                overwrite=True)
            facts = _card_facts(s, model, n_total, train_config, trained, scores, time.perf_counter() - start, env)
            for folder in (model_dir, adapter_dir):
                if folder is not None:
                    write_model_card(folder, facts)
        result = FinetuneResult(
            out=run.path, model_dir=model_dir, adapter_dir=adapter_dir, method=s.method, task=data.task,
            n_trainable=n_trainable, n_total=n_total, steps=trained.steps, best_step=monitor.best_step,
            stopped_early=trained.stopped_early, scores=scores, history=monitor.evaluations,
            memory_plan={**asdict(plan), "total": plan.total}, train_seconds=trained.train_seconds,
            wall_seconds=time.perf_counter() - start, peak_memory_bytes=memory.peak_bytes() or 0,
        )
        if env.is_main:
            summary = {**asdict(result), "settings": _identity(s, train_config)}
            write_json(run.path / SUMMARY_FILE, json.loads(json.dumps(summary, default=str)))
        return result


def _card_facts(s: FinetuneSettings, model: torch.nn.Module, n_total: int, train: TrainConfig,
                trained: TrainResult, scores: dict[str, float], wall_seconds: float, env: DistEnv) -> CardFacts:
    """What the model card of a fine-tune says: base model, data, method and settings, the scores it measured."""
    data = Path(s.data).name
    validation = Path(s.validation).name if s.validation else f"{data} (held-out {s.validation_fraction:.0%})"
    results = [EvalResult("loss" if name == "val_loss" else name, value, validation)
               for name, value in scores.items()]
    method = (f"LoRA (Hu et al. 2021), rank {s.lora_rank}, alpha {s.lora_alpha:g}, dropout {s.lora_dropout:g}, "
              f"on {s.lora_targets}; merged into the base weights" if s.method == "lora" else "full fine-tuning")
    epochs = {"epochs": s.epochs} if s.steps is None else {}  # --steps replaces epochs: the card says the steps
    hyper = {"lr": train.lr, "batch size": s.batch_size, **epochs, "weight decay": s.weight_decay,
             "warmup steps": train.warmup, "dtype": s.dtype, "seed": s.seed}
    tokens = trained.history[-1].get("tokens") if trained.history else trained.tokens
    return run_card_facts(Path(s.out).name, model.config, n_total, method, hyper, trained.steps, tokens, wall_seconds,
                          [data], results, base_model=s.model, world_size=env.world_size)


__all__ = ["FinetuneResult", "FinetuneSettings", "MemoryPlan", "finetune"]
