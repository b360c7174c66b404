"""The training loop: micro-batches, accumulation, clipping, AdamW, evaluation, logs, checkpoints, resume.

One optimizer step (as in nanoGPT's `train.py` and the GPT-3 recipe):

1. draw the step's `batch_size` sequences from the data stream (a seeded
   order in which draw i depends only on i, so a run can restart at any draw);
   under DDP each rank takes its slice, cut into `grad_accum` micro-batches;
2. forward and backward each micro-batch (in bf16 autocast if asked), the
   loss being the sum of the token losses over the number of labelled tokens
   in the whole step, so accumulation and data parallelism give exactly the
   gradient of the full batch's mean loss;
3. clip the gradient's global L2 norm (Pascanu et al. 2013), set the learning
   rate from the warmup + cosine schedule, and take an AdamW step.

Every `eval_every` steps the validation loss and perplexity exp(loss) are
measured on a fixed sample of validation sequences. Every step appends a line
to `metrics.jsonl`; the loss curve is drawn to `loss.png`. Checkpoints hold
everything a run needs to continue exactly where it stopped: weights,
optimizer moments, the step (the learning rate is a function of it), every
rank's random-number generator states and the data position. On CPU a resumed
run ends with the same weights, bit for bit, as one that never stopped.

Ctrl-C or SIGTERM stops after the current step with a checkpoint; `resume`
continues (and leaves a finished run as it is). A step whose loss or gradient
norm is NaN or infinite takes no optimizer step: the run stops with an error
and keeps its last checkpoint, or skips up to `skip_nonfinite` such steps, as
large runs skip the batches that make the loss spike (Chowdhery et al. 2022,
PaLM, section 5.1). metrics.jsonl writes a non-finite number as null.
Throughput is reported in tokens/s and as model FLOPs utilization (MFU:
Chowdhery et al. 2022, PaLM, appendix B): the model's training FLOPs per
second (3 × the forward FLOPs of Hoffmann et al. 2022, appendix F) over the
hardware's peak.

This module is the loop; next to it: run_folder.py (the run's folder and who may write it), checkpoint.py
(the checkpoint format and resuming from it), plots.py (loss.png), loggers.py, observe.py (memory and
communication report), and quantization-aware training comes from lmlab.quantization.qat.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset
from tqdm.auto import tqdm

from lmlab.allocator import return_freed_memory_promptly
from lmlab.config import ModelConfig
from lmlab.data.mixture import MixtureSampler
from lmlab.errors import LmlabError
from lmlab.hub.checkpoint import load_weights, save_checkpoint
from lmlab.io import json_line, remove_folder, write_jsonl
from lmlab.models import Transformer
from lmlab.planning.compute import forward_flops
from lmlab.planning.measure import uses_fused_attention
from lmlab.planning.limits import check_fits
from lmlab.planning.memory import TrainingPlan, plan_training_memory
from lmlab.planning.units import format_bytes
from lmlab.tokenizers.base import TokenizerProtocol
from lmlab.quantization.qat import prepare_qat
from lmlab.quantization.schemes import QuantSpec
from lmlab.training.checkpoint import read_trainer_state, restore_training_checkpoint, save_training_checkpoint
from lmlab.training.distributed import DistEnv, Strategy, all_reduce_sum
from lmlab.training.fsdp import ParallelConfig, build_strategy
from lmlab.training.objectives import Objective
from lmlab.training.loggers import LOGGERS, LoggerKind, open_logger
from lmlab.training.observe import REPORT_FILE, StepObserver
from lmlab.training.optim import WarmupCosine
from lmlab.training.plots import plot_loss
from lmlab.training.run_folder import RunFolder
from lmlab.training.run_lock import lock_run
from lmlab.training.sharded_checkpoint import is_sharded

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
VAL_SEED = 1234  # the validation collator restarts from this seed at every evaluation


@dataclass
class TrainConfig:
    """How to train. `batch_size` counts sequences per optimizer step over all processes and micro-batches."""

    steps: int = 500
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float | None = None  # default: lr / 10 (Chinchilla, Hoffmann et al. 2022, decays 10x)
    warmup: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    clip: float | None = 1.0
    dtype: str = "fp32"
    eval_every: int = 100
    eval_batches: int | None = 20  # None: the whole validation split
    checkpoint_every: int | None = None  # default: eval_every
    seed: int = 0
    progress: bool = True
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # DDP, ZeRO stages: lmlab.training.fsdp
    qat: str | None = None  # quantization-aware training: int8 fake-quant per "tensor", "channel" or "group"
    skip_nonfinite: int = 0  # steps with a NaN/inf loss or gradient norm skipped (no update) before the run stops
    logger: LoggerKind = "jsonl"  # where step metrics also go: lmlab.training.loggers

    def check(self, env: DistEnv) -> None:
        positive = {"steps": self.steps, "batch_size": self.batch_size, "grad_accum": self.grad_accum,
                    "eval_every": self.eval_every, "checkpoint_every": 1 if self.checkpoint_every is None else self.checkpoint_every}
        for name, value in positive.items():
            if value < 1:
                raise LmlabError(f"{name.replace('_', ' ')} must be at least 1, not {value}")
        if self.logger not in LOGGERS:
            raise LmlabError(f"unknown logger {self.logger!r}; choose one of {', '.join(LOGGERS)}")
        if self.dtype not in DTYPES:
            raise LmlabError(f"training dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        if self.clip is not None and self.clip <= 0:
            raise LmlabError(f"the gradient clipping norm must be positive, not {self.clip:g}")
        if self.skip_nonfinite < 0:
            raise LmlabError(f"the number of non-finite steps to skip must be 0 or more, not {self.skip_nonfinite}")
        if self.eval_batches is not None and self.eval_batches < 1:
            raise LmlabError(f"evaluation batches must be at least 1, not {self.eval_batches}")
        if self.batch_size % (env.world_size * self.grad_accum):
            raise LmlabError(
                f"batch size {self.batch_size} does not split into {env.world_size} process(es) x "
                f"{self.grad_accum} micro-batch(es); choose a multiple of {env.world_size * self.grad_accum}")
        self.parallel.check(env)
        self.schedule()
        check_fits(f"the data order of {self.steps:,} steps x {self.batch_size:,} sequences",
                   MixtureSampler.bytes_for(self.steps * self.batch_size), "train for fewer steps or smaller batches")

    def schedule(self) -> WarmupCosine:
        min_lr = self.lr / 10 if self.min_lr is None else self.min_lr
        return WarmupCosine(self.lr, min_lr, self.warmup, self.steps)

    def identity(self) -> dict[str, Any]:
        """The settings that decide the trained weights (not how long, how often to evaluate or save, nor how
        the work is spread over processes)."""
        skip = {"steps", "eval_every", "eval_batches", "checkpoint_every", "progress", "parallel", "skip_nonfinite",
                "logger"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


def training_plan(model_config: ModelConfig, n_params: int, config: TrainConfig, env: DistEnv,
                  seq_len: int) -> TrainingPlan:
    """The planner's memory per process for training with `config`: AdamW, bf16 autocast as mixed precision,
    the strategy's sharding, one micro-batch of activations with attention as the model runs it."""
    micro_batch = config.batch_size // (env.world_size * config.grad_accum) or 1
    return plan_training_memory(n_params, config.dtype, "adamw", mixed_precision=config.dtype == "bf16",
                                parallelism=config.parallel.parallelism(env), config=model_config, batch=micro_batch,
                                seq_len=seq_len, flash_attention=uses_fused_attention(model_config))


@dataclass
class StepMetrics:
    """What one optimizer step measured (val_* only on evaluation steps)."""

    step: int
    loss: float
    lr: float
    grad_norm: float
    tokens: int
    tokens_per_s: float
    val_loss: float | None = None
    val_perplexity: float | None = None
    val_by_set: dict[str, float] = field(default_factory=dict)
    skipped_steps: int | None = None  # non-finite steps skipped so far in the run, once there is one


@dataclass
class TrainResult:
    """How a run went: last losses, throughput, utilization, and where its files are."""

    steps: int
    stopped_early: bool
    train_loss: float | None
    val_loss: float | None
    val_perplexity: float | None
    tokens: int
    train_seconds: float
    wall_seconds: float
    tokens_per_s: float
    model_flops_per_s: float
    peak_flops_per_s: float
    mfu: float
    out: Path
    model_dir: Path | None
    history: list[dict[str, Any]]
    already_done: bool = False  # a resumed run that had reached its steps: nothing trained, nothing written


def stream(sampler: MixtureSampler, start: int = 0) -> Iterator[int]:
    """The draws of `sampler` from `start` on, with each pass's shuffled order computed once per pass.

    MixtureSampler decides which dataset each draw comes from, and takes that
    dataset's sequences in an order seeded by (seed, dataset, pass); its own
    iterator recomputes the pass's permutation at every draw, which costs a
    training step milliseconds on a dataset of 10^4 sequences.
    """
    orders: dict[int, tuple[int, np.ndarray]] = {}  # dataset -> (pass, its order in that pass)
    for draw in range(start, sampler.num_samples):
        source, rank = int(sampler.sources[draw]), int(sampler.rank[draw])
        size = int(sampler.sizes[source])
        epoch, position = divmod(rank, size)
        if source not in orders or orders[source][0] != epoch:
            orders[source] = (epoch, np.random.default_rng([sampler.seed, 1 + source, epoch]).permutation(size))
        yield int(sampler.offsets[source]) + int(orders[source][1][position])


def cpu_has_native_bf16() -> bool:
    """True if the CPU computes bf16 in hardware (AVX-512 BF16 or AMX); otherwise oneDNN emulates it."""
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def measure_peak_flops(device: torch.device, dtype: torch.dtype, size: int = 1024, seconds: float = 0.5) -> float:
    """FLOP/s of a large square matrix multiply in `dtype`: the practical peak of this process's device.

    A CPU has no datasheet figure lmlab can look up, so MFU is measured against
    what the same hardware reaches on its best-case kernel (2·n³ FLOPs per n×n product).
    """
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b
    count, start = 0, time.perf_counter()
    while True:
        a @ b
        count += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2 * size**3 * count / elapsed


class Trainer:
    """Trains `model` with `objective` on a weighted stream of training sets; see the module docstring."""

    def __init__(
        self,
        model: Transformer,
        objective: Objective,
        train_sets: Mapping[str, Dataset],
        val_sets: Mapping[str, Dataset],
        config: TrainConfig,
        run: RunFolder,
        tokenizer: TokenizerProtocol | None = None,
        weights: Mapping[str, float] | None = None,
        env: DistEnv | None = None,
        strategy: Strategy | None = None,
        seq_len: int | None = None,
        on_step: Callable[[StepMetrics, Trainer], None] | None = None,
        peak_flops: float | None = None,
        plan_memory: bool = True,
    ):
        """`plan_memory`: print the planner's memory estimate at the start (fine-tuning prints its own,
        which knows the frozen weights)."""
        self.env = env or DistEnv()
        config.check(self.env)
        self.model = model
        self.objective = objective
        self.train_sets = dict(train_sets)
        self.val_sets = {name: data for name, data in val_sets.items() if len(data)}
        total = sum(len(d) for d in self.train_sets.values())
        if total == 0:
            raise LmlabError("the training data holds no sequences")
        self.weights = dict(weights) if weights else {n: len(d) / total for n, d in self.train_sets.items()}
        self.config = config
        self.run = run
        self.tokenizer = tokenizer
        if config.qat:
            prepare_qat(model, QuantSpec(granularity=config.qat))
        self.strategy = strategy or build_strategy(self.env, config.parallel, config.dtype)
        self.seq_len = seq_len or len(next(d for d in self.train_sets.values() if len(d))[0]) - 1
        self.on_step = on_step
        self.peak_flops = peak_flops
        self.plan_memory = plan_memory
        self.schedule = config.schedule()
        self.micro_batch = config.batch_size // (self.env.world_size * config.grad_accum)
        self._dataset = ConcatDataset(list(self.train_sets.values()))
        self._stop = False
        self.skipped = 0  # non-finite steps skipped so far in the run

    # -- public controls --------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Finish the current step, write a checkpoint and return (what Ctrl-C does)."""
        self._stop = True

    def print(self, *args: Any) -> None:
        if self.env.is_main:
            tqdm.write(" ".join(str(a) for a in args))

    def describe(self) -> str:
        """The model size, the batch layout and the memory planner's estimate per process."""
        config, env = self.config, self.env
        n_params = sum(p.numel() for p in self.model.parameters())
        lines = [
            f"{self.objective.name} on a {n_params:,}-parameter {self.model.config.arch}; {env.world_size} "
            f"process(es) ({self.strategy.name}), batch {config.batch_size} = {env.world_size} x {config.grad_accum} "
            f"micro-batch(es) of {self.micro_batch} x {self.seq_len} tokens",
        ]
        if self.plan_memory:
            plan = training_plan(self.model.config, n_params, config, env, self.seq_len)
            terms = ", ".join(f"{t.name} {format_bytes(t.bytes)}" for t in plan.terms)
            lines.append(f"planned memory per process: {format_bytes(plan.total_bytes)} ({terms})")
        if self.model.config.arch == "encoder-decoder":
            lines.append("note: MFU counts the encoder and the decoder as reading seq_len tokens each, an upper "
                         "bound: span corruption gives the encoder about 0.9 and the decoder about 0.2 of that")
        return "\n".join(lines)

    # -- the loop ---------------------------------------------------------------------------------------

    def train(self) -> TrainResult:
        wall_start = time.perf_counter()
        return_freed_memory_promptly()  # resident memory = what the tensors need (lmlab.allocator)
        config, env = self.config, self.env
        checkpoint = self.run.latest_checkpoint() if self.run.resume else None
        state = read_trainer_state(checkpoint, self.model.config) if checkpoint else {}
        start_step = state.get("step", 0)
        if start_step >= config.steps:
            return self._already_done(checkpoint, start_step, time.perf_counter() - wall_start)
        rank_lock = lock_run(self.run.path, rank=env.rank) if env.distributed else None
        try:
            return self._train(checkpoint, state, wall_start)
        finally:
            if rank_lock is not None:
                rank_lock.release()

    def _train(self, checkpoint: Path | None, state: dict[str, Any], wall_start: float) -> TrainResult:
        config, env = self.config, self.env
        if checkpoint and not is_sharded(checkpoint):  # sharded weights load into the wrapped model
            load_weights(self.model, checkpoint)
        self.print(self.describe())
        wrapped = self.strategy.wrap(self.model)
        optimizer = self.strategy.make_optimizer(wrapped, config.lr, config.weight_decay, (config.beta1, config.beta2))
        observer = StepObserver(wrapped, optimizer, env)
        collator = self.objective.make_collator(config.seed * 1000)  # the same on every rank: see _step_batches
        torch.manual_seed(config.seed * 1000 + env.rank)  # dropout: a different stream on every rank
        start_step = state.get("step", 0)
        self.skipped = state.get("skipped_steps", 0)
        if checkpoint:
            restore_training_checkpoint(checkpoint, state, wrapped, optimizer, self.strategy, env, collator,
                                        self.print)
            self.print(f"resuming from {checkpoint} (step {start_step})")
        history = self._load_history(start_step)
        if config.dtype == "bf16" and env.device.type == "cpu" and not cpu_has_native_bf16():
            self.print("note: this CPU has no native bf16 (AVX-512 BF16 / AMX); bf16 autocast is emulated and "
                       "may be slower than fp32")
        order = self._sampler(start_step * config.batch_size)
        autocast = torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=config.dtype == "bf16")
        checkpoint_every = config.checkpoint_every or config.eval_every
        flops_per_step = 3 * sum(forward_flops(self.model.config, self.seq_len).values()) * config.batch_size
        tokens_per_step = config.batch_size * self.seq_len
        train_seconds, steps_done, last = 0.0, 0, None
        bar = tqdm(total=config.steps, initial=start_step, desc="training", unit="step",
                   disable=not (config.progress and env.is_main), dynamic_ncols=True)
        previous_handler = self._catch_interrupt()
        step, stopping = start_step, False
        log = open(self.run.metrics, "a", encoding="utf-8", buffering=1) if env.is_main else None
        tracker = open_logger(config.logger, self.run.path, history, start_step) if env.is_main else None
        try:
            while step < config.steps and not stopping:
                tick = time.perf_counter()
                loss, grad_norm, lr = self._train_step(wrapped, optimizer, self._step_batches(order, collator), step,
                                                       autocast)
                step += 1
                steps_done += 1
                train_seconds += time.perf_counter() - tick
                finite = math.isfinite(loss) and math.isfinite(grad_norm)
                self.skipped += not finite
                last = StepMetrics(step, loss, lr, grad_norm, step * tokens_per_step,
                                   steps_done * tokens_per_step / train_seconds, skipped_steps=self.skipped or None)
                if not finite and self.skipped > config.skip_nonfinite:
                    history.append(self._log(last, log))
                    raise self._divergence(last)
                if not finite:
                    self.print(f"step {step}: {self._nonfinite(last)}; step skipped, weights unchanged ({self.skipped} "
                               f"of at most {config.skip_nonfinite} skipped)")
                if step % config.eval_every == 0 or step == config.steps:
                    self._evaluate(wrapped, last)
                bar.update(1)
                bar.set_postfix(loss=f"{last.loss:.4f}", tok_s=f"{last.tokens_per_s:,.0f}", lr=f"{lr:.2e}",
                                refresh=False)
                history.append(self._log(last, log))
                if tracker is not None:
                    tracker.log(history[-1])
                if self.on_step is not None:
                    self.on_step(last, self)
                stopping = bool(all_reduce_sum(torch.tensor([float(self._stop)]), env)[0] > 0)
                if step % checkpoint_every == 0 or step == config.steps or stopping:
                    self._save(step, wrapped, optimizer, collator,
                               train_seconds + state.get("train_seconds", 0.0))
                    if env.is_main:
                        plot_loss(history, f"{self.objective.name}: {self.run.path.name}", self.run.plot,
                                  self.objective.unit)
        finally:
            if log is not None:
                log.close()
            if tracker is not None:
                tracker.close()
            bar.close()
            observer.close()
            self._release_interrupt(previous_handler)
        finished = step >= config.steps
        if finished:
            model = self.strategy.whole_model(self.model)  # sharded strategies gather the weights on rank 0
            if env.is_main:
                save_checkpoint(model, self.run.model_dir, self.tokenizer, overwrite=True)
        n_params = sum(p.numel() for p in self.model.parameters())
        self.print(observer.report(config.parallel.model_state_plan(env, n_params, config.dtype), self.strategy.name,
                                   self.run.path / REPORT_FILE))
        if not finished:
            self.print(f"stopped after step {step}; continue with --resume (checkpoint in {self.run.checkpoints})")
        return self._result(step, not finished, last, history, steps_done, train_seconds, flops_per_step,
                            time.perf_counter() - wall_start)

    @staticmethod
    def _nonfinite(metrics: StepMetrics) -> str:
        if not math.isfinite(metrics.loss):
            return f"the loss is {metrics.loss}"
        return f"the gradient norm is {metrics.grad_norm}"

    def _divergence(self, metrics: StepMetrics) -> LmlabError:
        latest = self.run.latest_checkpoint()
        kept = (f"its last checkpoint, {latest.name}, is kept: --resume --skip-nonfinite N continues from it, "
                "skipping up to N such steps" if latest else "it has no checkpoint yet")
        return LmlabError(f"training diverged at step {metrics.step}: {self._nonfinite(metrics)}; stopped without "
                          f"saving the model ({kept}); try a lower --lr or a longer --warmup")

    def _train_step(self, wrapped: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    batches: list[dict[str, torch.Tensor]], step: int,
                    autocast: torch.autocast) -> tuple[float, float, float]:
        """One optimizer step over this rank's micro-batches: (mean loss of the global batch, gradient norm, lr).
        A step whose loss or gradient norm is not finite leaves the weights and optimizer unchanged."""
        env = self.env
        n_targets = all_reduce_sum(torch.tensor([float(sum(self.objective.count(b) for b in batches))]), env)[0]
        lr = self.schedule.apply(optimizer, step)
        if not wrapped.training:  # (evaluation or an on_step callback may have left it in eval mode)
            wrapped.train()
        loss_total = torch.zeros((), device=env.device)
        for m, batch in enumerate(batches):
            with contextlib.nullcontext() if m == len(batches) - 1 else self.strategy.no_sync(wrapped):
                with autocast:
                    loss = self.objective.loss(wrapped, batch)
                # each rank's share of the global mean; DDP then averages the ranks' gradients, hence x world_size
                (loss * (env.world_size / n_targets)).backward()
            loss_total += loss.detach()
        grad_norm = float(self.strategy.clip_grad_norm(wrapped, self.config.clip or math.inf))
        loss = float(all_reduce_sum(loss_total.float().cpu().reshape(1), env)[0] / n_targets)
        if math.isfinite(loss) and math.isfinite(grad_norm):  # the same on every rank: both are global
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm, lr

    # -- data -------------------------------------------------------------------------------------------

    def _step_batches(self, order: Iterator[int], collator: Any) -> list[dict[str, torch.Tensor]]:
        """The next `batch_size` draws of the stream, collated into micro-batches; this rank's `grad_accum` of them.

        Every rank runs the same seeded collator over the whole step, in order, so the random spans a collator
        draws sequence by sequence (span corruption) depend on the sequence's place in the global batch, not on
        the number of processes: the run follows the single-process run. (Collating is cheap next to a step.)
        """
        indices = [next(order) for _ in range(self.config.batch_size)]
        batches = [collator([self._dataset[i] for i in indices[first: first + self.micro_batch]])
                   for first in range(0, len(indices), self.micro_batch)]
        accum = self.config.grad_accum
        return [self._to_device(batch) for batch in batches[self.env.rank * accum: (self.env.rank + 1) * accum]]

    def _sampler(self, start: int) -> Iterator[int]:
        sizes = {name: len(data) for name, data in self.train_sets.items()}
        sampler = MixtureSampler(sizes, self.weights, self.config.steps * self.config.batch_size, self.config.seed)
        return stream(sampler, start)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value.to(self.env.device, non_blocking=True) for key, value in batch.items()}

    # -- evaluation -------------------------------------------------------------------------------------

    def _evaluation_indices(self, size: int) -> np.ndarray:
        """A fixed sample of the validation split (the same at every evaluation, so losses compare)."""
        wanted = size if self.config.eval_batches is None else min(size, self.config.eval_batches * self.config.batch_size)
        chosen = np.random.default_rng(self.config.seed).choice(size, size=wanted, replace=False)
        return np.sort(chosen)

    @torch.no_grad()
    def _evaluate(self, wrapped: torch.nn.Module, metrics: StepMetrics) -> None:
        """Mean validation loss per labelled token, over every validation set and on each."""
        model = self.strategy.unwrap(wrapped)
        was_training = model.training
        model.eval()
        autocast = torch.autocast(self.env.device.type, dtype=torch.bfloat16, enabled=self.config.dtype == "bf16")
        grand = torch.zeros(2)
        for name, data in self.val_sets.items():
            # every rank collates every batch in order (the same random spans as one process would draw), and the
            # batches go round the ranks; under FSDP each forward pass gathers weights from all ranks, so a rank
            # left without a batch in the last round recomputes one without counting it
            collator = self.objective.make_collator(VAL_SEED)
            indices, size, ranks = self._evaluation_indices(len(data)), self.micro_batch, self.env.world_size
            batches = [collator([data[int(i)] for i in indices[first: first + size]])
                       for first in range(0, len(indices), size)]
            totals = torch.zeros(2)
            for b in range(self.env.rank, math.ceil(len(batches) / ranks) * ranks, ranks):
                batch = self._to_device(batches[min(b, len(batches) - 1)])
                with autocast:
                    loss = self.objective.loss(model, batch).float().cpu()
                if b < len(batches):
                    totals[0] += loss
                    totals[1] += self.objective.count(batch)
            all_reduce_sum(totals, self.env)
            metrics.val_by_set[name] = float(totals[0] / totals[1])
            grand += totals
        model.train(was_training)
        if grand[1] > 0:
            metrics.val_loss = float(grand[0] / grand[1])
            metrics.val_perplexity = math.exp(metrics.val_loss) if metrics.val_loss < 709 else math.inf
            sets = "" if len(metrics.val_by_set) < 2 else " (" + ", ".join(
                f"{n} {v:.4f}" for n, v in metrics.val_by_set.items()) + ")"
            self.print(f"step {metrics.step}: train loss {metrics.loss:.4f}, val loss {metrics.val_loss:.4f}{sets}, "
                       f"perplexity {metrics.val_perplexity:.2f}")

    # -- logs -------------------------------------------------------------------------------------------

    def _load_history(self, start_step: int) -> list[dict[str, Any]]:
        """The metrics of the steps up to `start_step` (a resumed run drops lines logged after its checkpoint)."""
        history = [record for record in self.run.read_metrics() if record["step"] <= start_step] if start_step else []
        if self.env.is_main:
            write_jsonl(self.run.metrics, history)
        return history

    @staticmethod
    def _log(metrics: StepMetrics, log: TextIO | None) -> dict[str, Any]:
        """The step's record, also written as a JSON line to `log` (open for the run, line-buffered) if given;
        a non-finite loss or norm is written as null (JSON has no NaN)."""
        record = {k: v for k, v in vars(metrics).items() if v is not None and v != {}}
        if log is not None:
            log.write(json_line(record))
        return record

    # -- checkpoints ------------------------------------------------------------------------------------

    def _save(self, step: int, wrapped: torch.nn.Module, optimizer: torch.optim.Optimizer, collator: Any,
              train_seconds: float) -> None:
        """Write checkpoints/step-NNNNNNN (lmlab.training.checkpoint), then drop the older checkpoints."""
        folder = self.run.checkpoints / f"step-{step:07d}"
        state = {
            "step": step,
            "samples_seen": step * self.config.batch_size,
            "world_size": self.env.world_size,
            "strategy": self.strategy.name,
            "train_config": asdict(self.config),
            "schedule": asdict(self.schedule),
            "train_seconds": train_seconds,
            "skipped_steps": self.skipped,
        }
        save_training_checkpoint(folder, wrapped, optimizer, self.strategy, self.env, collator, state, self.tokenizer)
        if not self.env.is_main:
            return
        for old in self.run.checkpoints.glob("step-*"):
            if old != folder:
                remove_folder(old)

    # -- Ctrl-C and SIGTERM -----------------------------------------------------------------------------

    def _catch_interrupt(self) -> Any:
        """First Ctrl-C or SIGTERM (what `kill`, a job scheduler, or a dying --nproc launcher sends): stop after
        this step with a checkpoint. A second one: stop now."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum: int, frame: Any) -> None:
            name = "interrupt" if signum == signal.SIGINT else "terminate signal"
            self.print(f"{name}: stopping after this step with a checkpoint (again to stop at once)")
            self._stop = True
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

        return signal.signal(signal.SIGINT, handler), signal.signal(signal.SIGTERM, handler)

    def _release_interrupt(self, previous: Any) -> None:
        if previous is not None:
            signal.signal(signal.SIGINT, previous[0])
            signal.signal(signal.SIGTERM, previous[1])

    def _already_done(self, checkpoint: Path, step: int, wall_seconds: float) -> TrainResult:
        """A resumed run whose checkpoint has reached --steps: say so and change nothing (but write model/ from
        the last checkpoint if the run was stopped between that checkpoint and model/)."""
        history = self.run.read_metrics()
        self.print(f"{self.run.path} is finished: it reached step {step} (of --steps {self.config.steps}); nothing "
                   "to do (raise --steps to train longer)")
        evals = [r for r in history if r.get("val_loss") is not None]
        if not self.run.model_dir.is_dir() and step == self.config.steps and not is_sharded(checkpoint):
            if self.env.is_main:
                load_weights(self.model, checkpoint)
                save_checkpoint(self.model, self.run.model_dir, self.tokenizer)
                self.print(f"wrote {self.run.model_dir} from {checkpoint}")
            all_reduce_sum(torch.zeros(1), self.env)  # the other ranks wait for rank 0's model/
        model_dir = self.run.model_dir if self.run.model_dir.is_dir() else None
        return TrainResult(step, False, history[-1].get("loss") if history else None,
                           evals[-1]["val_loss"] if evals else None, evals[-1].get("val_perplexity") if evals else None,
                           0, 0.0, wall_seconds, 0.0, 0.0, 0.0, 0.0, self.run.path, model_dir, history,
                           already_done=True)

    # -- summary ----------------------------------------------------------------------------------------

    def _result(self, step: int, stopped: bool, last: StepMetrics | None, history: list[dict[str, Any]],
                steps_done: int, train_seconds: float, flops_per_step: float, wall_seconds: float) -> TrainResult:
        peak = self.peak_flops
        if peak is None:
            measured = torch.tensor([measure_peak_flops(self.env.device, DTYPES[self.config.dtype])])
            peak = float(all_reduce_sum(measured, self.env)[0])
        achieved = steps_done * flops_per_step / train_seconds if train_seconds else 0.0
        evals = [r for r in history if r.get("val_loss") is not None]
        return TrainResult(
            steps=step,
            stopped_early=stopped,
            train_loss=last.loss if last else None,
            val_loss=evals[-1]["val_loss"] if evals else None,
            val_perplexity=evals[-1]["val_perplexity"] if evals else None,
            tokens=steps_done * self.config.batch_size * self.seq_len,
            train_seconds=train_seconds,
            wall_seconds=wall_seconds,
            tokens_per_s=steps_done * self.config.batch_size * self.seq_len / train_seconds if train_seconds else 0.0,
            model_flops_per_s=achieved,
            peak_flops_per_s=peak,
            mfu=achieved / peak if peak else 0.0,
            out=self.run.path,
            model_dir=self.run.model_dir if not stopped else None,
            history=history,
        )
