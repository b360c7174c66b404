"""IsoFLOP sweeps: train a ladder of tiny decoders at a few fixed compute budgets.

Hoffmann et al. 2022 ("Training Compute-Optimal Large Language Models",
section 3.2, approach 2): fix a FLOP budget C, train models of several sizes N,
each on D = C / (6N) tokens (C ≈ 6ND, Kaplan et al. 2020, section 2.1), and
plot the final loss against N. Each budget gives a U-shaped "IsoFLOP profile":
small models learn too little per token, large ones see too few tokens; the
bottom is the compute-optimal size for that budget. :mod:`lmlab.scaling.fit`
then fits the parametric law L(N, D) = E + A/N^α + B/D^β to every run
(approach 3).

The sizes of one budget spread evenly in log N from N*/spread to N*·spread
around N* = sqrt(C / (6·r)), the size that trains on r tokens per parameter,
each taken as the nearest model of the ladder, so each profile brackets its
minimum from both sides. Chinchilla's r is about 20; tiny character-level
models reach their best loss for a budget on far more tokens per parameter
(about 100 on tinyshakespeare), so the default centre is r = 60. The ladder
is one family that only grows in width (GPT-2 style, 2 layers, 2 heads,
d_ff = 4·d_model): mixing depths and head sizes at a few thousand parameters
adds a shape effect of several percent to the loss that no L(N, D) can fit.
Everything but N and D stays fixed across the grid: the family, sequence
length, batch, peak learning rate, warmup fraction and seed. The default peak
rate, 1e-2, is high because the smallest models need it: at 5e-3 a
5K-parameter model ended 4% worse on tinyshakespeare, a lag that shrinks
with longer runs and so bends the fitted law (its held-out error doubled). Each run's cosine schedule ends at the run's
own last step: Hoffmann et al. (section 3 and figure A1) show that a cosine
cycle longer than the run overestimates the loss of the shorter runs.

Runs train with lmlab's own `pretrain` (one run folder each, under
`runs/`), in `jobs` worker processes. Finished runs go to `results.jsonl`,
rewritten atomically after each one; started again with the same settings, a
sweep skips the finished runs and resumes an interrupted one from its last
checkpoint. Budgets and sizes may change between invocations (adding a budget
extends the sweep); the training settings may not.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import queue
import re
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lmlab.config import ModelConfig, get_preset
from lmlab.errors import LmlabError
from lmlab.io import read_json, write_json, write_jsonl, write_marker
from lmlab.planning.params import count_parameters
from lmlab.planning.units import format_count, require_positive, scientific

SWEEP_FILE = "sweep.json"
SWEEP_FORMAT = "lmlab.scaling-sweep"
SWEEP_KIND = "scaling-sweep"  # the kind of output folder lmlab.io marks
RESULTS_FILE = "results.jsonl"
N_HEAD = 2


@dataclass(frozen=True)
class Shape:
    """A model on the size ladder: a GPT-2 style decoder of `n_layer` layers of width `d_model`, 2 heads."""

    d_model: int
    n_layer: int

    def __post_init__(self) -> None:
        if self.d_model < N_HEAD or self.d_model % N_HEAD or self.n_layer < 1:
            raise LmlabError(f"model shape {self.label}: d_model must be a positive multiple of {N_HEAD} "
                             f"(it splits into {N_HEAD} heads) and n_layer at least 1")

    @property
    def label(self) -> str:
        return f"{self.d_model}x{self.n_layer}"

    def config(self, vocab_size: int, seq_len: int) -> ModelConfig:
        """The decoder: tiny-gpt2's family (learned positions, pre-LayerNorm, GELU, tied embeddings)."""
        return get_preset("tiny-gpt2").replace(
            vocab_size=vocab_size, d_model=self.d_model, n_layer=self.n_layer, n_head=N_HEAD, n_kv_head=N_HEAD,
            d_head=self.d_model // N_HEAD, d_ff=4 * self.d_model, max_seq_len=seq_len, dropout=0.0)


DEFAULT_SHAPES = tuple(Shape(d, 2) for d in (8, 12, 16, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192))
DEFAULT_BUDGETS = (1e10, 3e10, 1e11, 3e11)


def parse_shapes(text: str) -> tuple[Shape, ...]:
    """Read '32x2,48x3,...' (d_model x n_layer) into shapes."""
    shapes = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        match = re.fullmatch(r"(\d+)[xX](\d+)", item)
        if match is None:
            raise LmlabError(f"model sizes are d_model x n_layer, such as 64x3, not {item!r}")
        shapes.append(Shape(int(match.group(1)), int(match.group(2))))
    if not shapes:
        raise LmlabError("give at least one model size, such as 64x3")
    return tuple(shapes)


def parse_budgets(text: str) -> tuple[float, ...]:
    """Read '1e11,3e11' (FLOPs) into budgets."""
    budgets = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            value = float(item)
        except ValueError:
            raise LmlabError(f"compute budgets are FLOPs such as 1e11, not {item!r}") from None
        budgets.append(require_positive("compute budget", value))
    if not budgets:
        raise LmlabError("give at least one compute budget, such as 1e11")
    return tuple(sorted(set(budgets)))


@dataclass
class SweepSettings:
    """A sweep: which budgets and sizes, and the training settings shared by every run."""

    data: Path
    out: Path
    budgets: tuple[float, ...] = DEFAULT_BUDGETS
    shapes: tuple[Shape, ...] = DEFAULT_SHAPES
    per_budget: int = 5
    spread: float = 4.0
    tokens_per_param: float = 60.0
    tokenizer: str = "char"
    seq_len: int = 64
    batch_size: int = 32
    lr: float = 1e-2
    warmup_fraction: float = 0.1
    eval_batches: int = 16
    min_steps: int = 50
    seed: int = 0
    jobs: int = 2

    def check(self) -> None:
        if not Path(self.data).exists():
            raise LmlabError(f"{self.data}: no such file or folder")
        for name in ("per_budget", "seq_len", "batch_size", "eval_batches", "min_steps", "jobs"):
            if getattr(self, name) < 1:
                raise LmlabError(f"{name.replace('_', ' ')} must be at least 1, not {getattr(self, name)}")
        if self.seq_len < 2:
            raise LmlabError(f"sequence length must be at least 2, not {self.seq_len}")
        require_positive("learning rate", self.lr)
        require_positive("tokens per parameter", self.tokens_per_param)
        if self.spread < 1:
            raise LmlabError(f"the size spread is a factor of at least 1, not {self.spread:g}")
        if not 0 <= self.warmup_fraction < 1:
            raise LmlabError(f"the warmup fraction must be in [0, 1), not {self.warmup_fraction:g}")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def identity(self) -> dict[str, Any]:
        """What makes two runs' losses comparable: the data and every training setting (not budgets, sizes, jobs)."""
        data = Path(self.data).resolve()
        files = sorted(data.rglob("*")) if data.is_dir() else [data]
        return {
            "data": str(data),
            "data_bytes": sum(f.stat().st_size for f in files if f.is_file()),
            "tokenizer": self.tokenizer,
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "warmup_fraction": self.warmup_fraction,
            "eval_batches": self.eval_batches,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid: a model size trained for `steps` steps within a compute budget."""

    budget: float
    shape: Shape
    n_params: int
    steps: int
    tokens: int

    @property
    def name(self) -> str:
        return f"C{scientific(self.budget)}-{self.shape.label}"

    @property
    def flops(self) -> float:
        """6·N·D with the tokens actually trained on (whole steps)."""
        return 6.0 * self.n_params * self.tokens


@dataclass(frozen=True)
class RunRecord:
    """One finished run: its size, tokens, compute and final losses (a line of results.jsonl)."""

    name: str
    budget: float
    d_model: int
    n_layer: int
    n_params: int
    tokens: int
    steps: int
    flops: float
    val_loss: float
    train_loss: float
    train_seconds: float
    tokens_per_s: float


@dataclass
class SweepResult:
    """What a sweep did: every finished run (old and new), runs left out, and how busy the machine was."""

    out: Path
    records: list[RunRecord]
    trained: list[str]
    skipped: list[str]
    seconds: float
    jobs: int
    threads_per_job: int
    load_average: list[tuple[float, float, float]] = field(default_factory=list)


def plan_runs(settings: SweepSettings, vocab_size: int) -> tuple[list[RunSpec], list[str]]:
    """The grid: for each budget, ladder sizes around N* = sqrt(C/(6r)), each on D = C/(6N) tokens.

    The targets are N*·spread^t for `per_budget` values of t evenly spaced in
    [-1, 1]; each takes the ladder model nearest in log N (two targets that
    meet the same model make one run). D is rounded to whole steps. A size
    whose run would be shorter than `min_steps` steps is left out (its D is
    too small to train on); the reasons are returned with the grid.
    """
    sized = [(count_parameters(s.config(vocab_size, settings.seq_len)), s) for s in settings.shapes]
    runs, skipped = [], []
    for budget in settings.budgets:
        centre = math.sqrt(budget / (6 * settings.tokens_per_param))
        exponents = [2 * i / (settings.per_budget - 1) - 1 for i in range(settings.per_budget)] \
            if settings.per_budget > 1 else [0.0]
        chosen = {min(sized, key=lambda item: abs(math.log(item[0] / (centre * settings.spread**t)))) for t in exponents}
        for n_params, shape in sorted(chosen, key=lambda item: item[0]):
            steps = round(budget / (6 * n_params) / settings.tokens_per_step)
            spec = RunSpec(budget, shape, n_params, steps, steps * settings.tokens_per_step)
            if steps < settings.min_steps:
                skipped.append(f"{spec.name}: {steps} steps, fewer than {settings.min_steps}")
            else:
                runs.append(spec)
    return runs, skipped


def read_results(folder: str | Path) -> list[RunRecord]:
    """The finished runs of a sweep folder."""
    path = Path(folder) / RESULTS_FILE
    if not Path(folder).is_dir():
        raise LmlabError(f"{folder}: no such folder")
    if not path.is_file():
        raise LmlabError(f"{folder}: not a scaling sweep (no {RESULTS_FILE}); run `lmlab scaling sweep` first")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            records.append(RunRecord(**json.loads(line)))
        except (json.JSONDecodeError, TypeError) as err:
            raise LmlabError(f"{path}, line {number}: not a sweep result ({err})") from None
    return records


def _write_results(out: Path, records: list[RunRecord]) -> None:
    write_jsonl(out / RESULTS_FILE, (asdict(r) for r in records))


def _open_sweep(settings: SweepSettings) -> list[RunRecord]:
    """Create the sweep folder or check it holds a sweep with the same settings; return its finished runs."""
    out = Path(settings.out)
    if out.exists() and not out.is_dir():
        raise LmlabError(f"{out} exists and is not a folder")
    sweep_file = out / SWEEP_FILE
    identity = settings.identity()
    if sweep_file.is_file():
        saved = read_json(sweep_file, SWEEP_FORMAT, "an lmlab scaling sweep")
        changed = sorted(k for k in saved["identity"].keys() | identity.keys()
                         if saved["identity"].get(k) != identity.get(k))
        if changed:
            raise LmlabError(f"{out} holds a sweep with other training settings ({', '.join(changed)}); its losses "
                             "would not compare: choose another output folder")
        return read_results(out) if (out / RESULTS_FILE).is_file() else []
    if out.is_dir() and any(out.iterdir()):
        raise LmlabError(f"{out} is not empty and holds no scaling sweep; choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, SWEEP_KIND)
    write_json(sweep_file, {"format": SWEEP_FORMAT, "identity": identity})
    return []


def _prepare_data(settings: SweepSettings, progress: bool) -> tuple[Path, int]:
    """The packed corpus: a prepared dataset folder as it is, or the text tokenized and packed once into out/data.

    Raw text is used whole: no quality filter or deduplication (the sweep
    measures a law for the corpus it is given).
    """
    from lmlab.data.cleaning import QualityRules
    from lmlab.data.packing import MANIFEST, load_prepared
    from lmlab.data.pipeline import PrepareSettings, prepare

    if (Path(settings.data) / MANIFEST).is_file():
        folder = Path(settings.data)
        prepared = load_prepared(folder)
        if prepared.seq_len != settings.seq_len:
            raise LmlabError(f"{folder} holds sequences of {prepared.seq_len} tokens; run the sweep with --seq-len "
                             f"{prepared.seq_len}")
    else:
        folder = Path(settings.out) / "data"
        keep_all = QualityRules(min_chars=1, max_symbol_ratio=1.0, min_alpha_word_fraction=0.0,
                                max_duplicate_line_fraction=1.0, max_duplicate_line_char_fraction=1.0,
                                max_top_ngram_char_fraction={}, max_duplicate_ngram_char_fraction={})
        prepared = prepare([settings.data], settings.tokenizer, folder,
                           PrepareSettings(seq_len=settings.seq_len, rules=keep_all, exact_dedup=False,
                                           near_dedup_threshold=None),
                           name="corpus", progress=progress)
    needed = settings.eval_batches * settings.batch_size
    if len(prepared.validation) < needed:
        raise LmlabError(f"the validation split holds {len(prepared.validation)} sequences of {settings.seq_len} "
                         f"tokens, fewer than the {needed} each evaluation reads; give more text or fewer "
                         "--eval-batches")
    return folder, prepared.vocab_size


_progress: Any = None  # the queue a worker reports its steps to


def _start_worker(threads: int, progress: Any) -> None:
    import torch

    global _progress
    torch.set_num_threads(threads)
    _progress = progress


def _train(spec: RunSpec, settings: SweepSettings, data: Path, vocab_size: int) -> RunRecord | None:
    """Train one run of the grid with `pretrain` (in a worker process); None if it was interrupted."""
    from lmlab.training.pretrain import PretrainSettings, pretrain
    from lmlab.training.run_folder import RUN_FILE
    from lmlab.training.trainer import TrainConfig

    out = Path(settings.out)
    run_dir = out / "runs" / spec.name
    config = spec.shape.config(vocab_size, settings.seq_len)
    train = TrainConfig(steps=spec.steps, batch_size=settings.batch_size, lr=settings.lr,
                        warmup=int(settings.warmup_fraction * spec.steps), eval_every=spec.steps,
                        eval_batches=settings.eval_batches, seed=settings.seed, progress=False)
    pretrain_settings = PretrainSettings(out=run_dir, model_config=config, data=[data], seq_len=settings.seq_len,
                                         resume=(run_dir / RUN_FILE).is_file(), train=train, progress=False)

    def report(metrics: Any, trainer: Any) -> None:
        if _progress is not None:
            _progress.put((spec.name, metrics.step, metrics.loss))

    (out / "logs").mkdir(exist_ok=True)
    with open(out / "logs" / f"{spec.name}.log", "a", encoding="utf-8") as log, \
            contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        result = pretrain(pretrain_settings, on_step=report)
    if result.stopped_early or result.val_loss is None:
        return None
    return RunRecord(spec.name, spec.budget, spec.shape.d_model, spec.shape.n_layer, spec.n_params, spec.tokens,
                     spec.steps, spec.flops, result.val_loss, result.train_loss, result.train_seconds,
                     result.tokens_per_s)


class _Bars:
    """An overall bar, and one bar per run in progress, fed by the workers' step reports."""

    def __init__(self, total: int, enabled: bool):
        self.enabled = enabled
        self.overall = tqdm(total=total, desc="sweep", unit="run", position=0, disable=not enabled,
                            dynamic_ncols=True)
        self.runs: dict[str, tqdm] = {}
        self.slots: dict[str, int] = {}

    def start(self, spec: RunSpec) -> None:
        taken = set(self.slots.values())
        self.slots[spec.name] = slot = next(i for i in range(1, len(taken) + 2) if i not in taken)
        self.runs[spec.name] = tqdm(total=spec.steps, desc=f"{spec.name} (N={format_count(spec.n_params)})",
                                    unit="step", position=slot, leave=False, disable=not self.enabled,
                                    dynamic_ncols=True)

    def step(self, name: str, step: int, loss: float) -> None:
        bar = self.runs.get(name)
        if bar is not None:
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def finish(self, name: str, line: str) -> None:
        self.runs.pop(name).close()
        del self.slots[name]
        self.overall.update(1)
        self.overall.write(line)

    def close(self) -> None:
        for bar in self.runs.values():
            bar.close()
        self.overall.close()


def run_sweep(settings: SweepSettings, progress: bool = True) -> SweepResult:
    """Train every run of the grid not yet in results.jsonl; return all finished runs of the folder."""
    settings.check()
    start = time.perf_counter()
    loads = [os.getloadavg()]
    records = _open_sweep(settings)
    data, vocab_size = _prepare_data(settings, progress)
    specs, skipped = plan_runs(settings, vocab_size)
    done = {r.name for r in records}
    todo = [s for s in specs if s.name not in done]
    todo.sort(key=lambda s: -s.flops)  # longest first, so the last runs to finish are short ones
    jobs = max(1, min(settings.jobs, len(todo)))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    trained: list[str] = []
    bars = _Bars(len(todo), progress)
    context = multiprocessing.get_context("spawn")
    reports = context.Queue()
    try:
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker,
                                 initargs=(threads, reports)) as pool:
            pending: dict[Future, RunSpec] = {pool.submit(_train, s, settings, data, vocab_size): s for s in todo}
            started: set[str] = set()
            try:
                while pending:
                    finished, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    _drain(reports, bars, started, {s.name: s for s in todo})
                    for future in finished:
                        spec = pending.pop(future)
                        record = future.result()
                        if spec.name not in started:
                            bars.start(spec)
                            started.add(spec.name)
                        if record is None:
                            bars.finish(spec.name, f"{spec.name}: interrupted, resumes on the next start")
                            continue
                        records.append(record)
                        records.sort(key=lambda r: (r.budget, r.n_params))
                        _write_results(Path(settings.out), records)
                        trained.append(record.name)
                        bars.finish(spec.name, f"{spec.name}: N={format_count(record.n_params)} "
                                               f"D={format_count(record.tokens)} val loss {record.val_loss:.4f} "
                                               f"({record.train_seconds:.0f} s)")
            except KeyboardInterrupt:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    finally:
        bars.close()
        reports.close()
    loads.append(os.getloadavg())
    return SweepResult(Path(settings.out), records, trained, skipped, time.perf_counter() - start, jobs, threads,
                       loads)


def _drain(reports: Any, bars: _Bars, started: set[str], specs: dict[str, RunSpec]) -> None:
    """Move every step report waiting in the queue onto its run's bar."""
    while True:
        try:
            name, step, loss = reports.get_nowait()
        except queue.Empty:
            return
        if name not in started:
            bars.start(specs[name])
            started.add(name)
        bars.step(name, step, loss)
