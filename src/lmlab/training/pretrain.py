"""`pretrain`: from a preset and some text (or the corpus lmlab ships) to a trained checkpoint, in one call.

The pieces, in order: the model config from a preset (and overrides); the
data, either folders made by `lmlab data prepare` or raw text that is
prepared here (read, clean, deduplicate, tokenize, pack: see
:mod:`lmlab.data.pipeline`) into the run's `data/` folder; the tokenizer with
the tokens the objective needs; a mixture of the datasets by weight; then the
:class:`~lmlab.training.trainer.Trainer`.

Tokenizer for raw text (`tokenizer="bpe"`, the default): a byte-level BPE
vocabulary of `vocab_size` tokens learned from the corpus itself (Sennrich et
al. 2016, via `lmlab.tokenizers.train_bpe`). It never meets an unknown
character, it saves as a `tokenizer.json` that `load_model` and transformers
read, and on the shipped corpus (about 700 distinct words) 1024 tokens cover
almost every word whole, so a tiny model spends its capacity on grammar and
facts instead of spelling. `tokenizer="char"` gives one token per character
(nanoGPT's shakespeare_char); a path loads an existing tokenizer.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.config import ARCHS, ModelConfig, get_preset
from lmlab.data.corpus import default_documents
from lmlab.data.mixture import check_weights, load_mixture
from lmlab.data.packing import MANIFEST, PreparedData, load_prepared, read_manifest
from lmlab.data.pipeline import CHAR, PrepareSettings, char_tokenizer, format_funnel, prepare_documents
from lmlab.data.readers import corpus_files, read_documents
from lmlab.errors import LmlabError, did_you_mean
from lmlab.hub.model_card import CardFacts, EvalResult, run_card_facts, write_model_card
from lmlab.models import Transformer
from lmlab.planning.limits import check_fits
from lmlab.planning.params import count_parameters
from lmlab.planning.units import format_count
from lmlab.tokenizers import load_tokenizer, train_bpe
from lmlab.training.distributed import DistEnv, run_on_main
from lmlab.training.objectives import OBJECTIVES, model_config_for, objective_for, prepare_tokenizer
from lmlab.training.run_folder import RunFolder, open_run
from lmlab.training.trainer import StepMetrics, TrainConfig, Trainer, TrainResult, training_plan

DEFAULT_PRESETS = {"decoder": "tiny-gpt2", "encoder": "tiny-bert", "encoder-decoder": "tiny-t5"}
SHIPPED = "corpus"  # the dataset name of the shipped corpus in a mixture
BPE = "bpe"
DEFAULT_SEQ_LEN = 128


@dataclass
class PretrainSettings:
    """Everything `lmlab pretrain` takes. `data` lists prepared folders and/or raw corpus files or folders;
    empty means the shipped corpus."""

    out: str | Path
    arch: str | None = None
    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    model_config: ModelConfig | None = None  # instead of a preset (Python API only)
    data: list[str | Path] = field(default_factory=list)
    mix: dict[str, float] | None = None
    tokenizer: str = BPE
    vocab_size: int = 1024
    seq_len: int | None = None
    text_field: str = "text"
    txt_split: str = "file"
    resume: bool = False
    train: TrainConfig = field(default_factory=TrainConfig)
    progress: bool = True


@dataclass
class _Source:
    """One dataset of the run: prepared already (`prepared`), or raw text to prepare into the run folder."""

    name: str
    prepared: Path | None = None
    raw: list[Path] = field(default_factory=list)


def base_config(settings: PretrainSettings) -> ModelConfig:
    """The model config: the given one, or the preset (default: the arch's tiny preset) with overrides."""
    arch = settings.arch
    if arch is not None and arch not in ARCHS:
        raise LmlabError(f"unknown architecture {arch!r}{did_you_mean(arch, ARCHS)}; choose from {', '.join(ARCHS)}")
    if settings.model_config is not None:
        config = settings.model_config
    else:
        config = get_preset(settings.preset or DEFAULT_PRESETS[arch or "decoder"])
    if arch is not None and config.arch != arch:
        raise LmlabError(f"preset {settings.preset!r} has the {config.arch} architecture, not {arch}; "
                         f"pick a preset such as {DEFAULT_PRESETS[arch]}")
    if config.arch == "encoder":
        config = config.replace(head="mlm")
    elif config.head != "lm":
        config = config.replace(head="lm")
    return with_overrides(config, settings.overrides)


def with_overrides(config: ModelConfig, overrides: dict[str, Any]) -> ModelConfig:
    """`config` with some fields changed; a size derived from changed fields follows them unless set too.

    Where a preset's head width is d_model / n_head, its key/value heads are its
    query heads (plain multi-head attention) and its decoder is as deep as its
    encoder, they stay so: after `d_model=128` the heads widen, after
    `n_layer=4` both stacks deepen. Sizes the preset sets otherwise (grouped
    key/value heads, a head width of its own) stay as they are.
    """
    changes = dict(overrides)
    derived = {
        "d_head": (config.d_head == config.d_model // config.n_head, ("d_model", "n_head")),
        "n_kv_head": (config.n_kv_head == config.n_head, ("n_head",)),
        "n_decoder_layer": (config.n_decoder_layer == config.n_layer, ("n_layer",)),
    }
    for name, (follows, sources) in derived.items():
        if follows and name not in changes and any(source in changes for source in sources):
            changes[name] = None  # ModelConfig derives it again
    return config.replace(**changes) if changes else config


def _sources(settings: PretrainSettings) -> list[_Source]:
    if not settings.data:
        return [_Source(SHIPPED)]
    sources: list[_Source] = []
    for item in map(Path, settings.data):
        if (item / MANIFEST).is_file():
            sources.append(_Source(read_manifest(item)["name"], prepared=item))
        else:
            sources.append(_Source(item.stem, raw=corpus_files([item])))
    names = [s.name for s in sources]
    for name in names:
        if names.count(name) > 1:
            raise LmlabError(f"two datasets are named {name!r}; rename one (prepare it with --name)")
    return sources


def _seq_len(settings: PretrainSettings, sources: list[_Source], config: ModelConfig) -> int:
    packed = {read_manifest(s.prepared)["seq_len"] for s in sources if s.prepared}
    if len(packed) > 1:
        raise LmlabError(f"the prepared datasets hold sequences of different lengths ({sorted(packed)}); "
                         "prepare them with the same --seq-len")
    seq_len = settings.seq_len
    if packed:
        (data_len,) = packed
        if seq_len is not None and seq_len != data_len:
            raise LmlabError(f"the prepared data holds sequences of {data_len} tokens, not {seq_len}; omit --seq-len "
                             "or prepare the data again with it")
        seq_len = data_len
    seq_len = min(DEFAULT_SEQ_LEN, config.max_seq_len) if seq_len is None else seq_len
    if seq_len < 2:
        raise LmlabError(f"sequence length must be at least 2, not {seq_len}")
    if seq_len > config.max_seq_len:
        raise LmlabError(f"sequence length {seq_len} is beyond the model's context of {config.max_seq_len} tokens; "
                         "use a shorter --seq-len or a model with a longer context (max_seq_len)")
    return seq_len


def _identity(settings: PretrainSettings, config: ModelConfig, sources: list[_Source], seq_len: int) -> dict[str, Any]:
    data = [str(s.prepared.resolve()) if s.prepared else [str(p.resolve()) for p in s.raw] for s in sources]
    return {
        "model": config.to_dict(),
        "data": data or "shipped corpus",
        "mix": settings.mix,
        "tokenizer": settings.tokenizer,
        "vocab_size": settings.vocab_size,
        "documents": [settings.text_field, settings.txt_split],
        "seq_len": seq_len,
        "train": settings.train.identity(),
    }


def _documents(source: _Source, settings: PretrainSettings) -> list[str]:
    if source.name == SHIPPED and not source.raw:
        return default_documents()
    return [doc for path in source.raw for doc in read_documents(path, settings.text_field, settings.txt_split)]


def _raw_tokenizer(documents: list[str], settings: PretrainSettings, progress: bool) -> Any:
    """The tokenizer for raw text: BPE learned from `documents`, a character vocabulary, or a saved one."""
    if settings.tokenizer == CHAR:
        return char_tokenizer(documents)
    if settings.tokenizer != BPE:
        return load_tokenizer(settings.tokenizer)
    if not any(doc.strip() for doc in documents):
        raise LmlabError("the corpus is empty: it holds no text to learn a tokenizer from")
    with tempfile.TemporaryDirectory() as tmp:
        text_file = Path(tmp) / "corpus.txt"
        text_file.write_text("\n\n".join(documents), encoding="utf-8")
        return train_bpe([text_file], settings.vocab_size, show_progress=progress)


def _prepare_raw(sources: list[_Source], run: RunFolder, settings: PretrainSettings, seq_len: int,
                 say: Callable[[str], None]) -> None:
    """Prepare the raw sources into run/data/<name> (once: a resumed run reuses them); one tokenizer for all."""
    todo = [s for s in sources if s.prepared is None and not (run.data_dir / s.name / MANIFEST).is_file()]
    if todo:
        documents = {s.name: _documents(s, settings) for s in todo}
        tokenizer = _raw_tokenizer([d for docs in documents.values() for d in docs], settings, settings.progress)
        for source in todo:
            say(f"preparing {source.name!r} ({', '.join(map(str, source.raw)) or 'the shipped corpus'})")
            data = prepare_documents(documents[source.name], tokenizer, run.data_dir / source.name,
                                     PrepareSettings(seq_len=seq_len), source.name, settings.progress,
                                     [str(p) for p in source.raw] or ["lmlab shipped corpus"])
            say(format_funnel(data.manifest))


def pretrain(settings: PretrainSettings, env: DistEnv | None = None,
             on_step: Callable[[StepMetrics, Trainer], None] | None = None) -> TrainResult:
    """Pre-train a model as `settings` say; returns the run's result (the model is in `out/model`)."""
    env = env or DistEnv()
    say = (lambda text: print(text, flush=True)) if env.is_main else (lambda text: None)
    settings.train.check(env)
    config = base_config(settings)
    sources = _sources(settings)
    seq_len = _seq_len(settings, sources, config)
    plan = training_plan(config, count_parameters(config), settings.train, env, seq_len)
    check_fits(f"training a {format_count(plan.n_params)}-parameter model on batches of {settings.train.batch_size} x "
               f"{seq_len} tokens", plan.total_bytes, "choose a smaller model, --batch-size (or more --grad-accum) "
               "or --seq-len")
    if settings.mix is not None:
        check_weights(settings.mix, [s.name for s in sources])
    if settings.tokenizer not in (BPE, CHAR) and not Path(settings.tokenizer).exists():
        raise LmlabError(f"--tokenizer must be 'bpe', 'char' or a tokenizer file or folder; {settings.tokenizer} "
                         "does not exist")
    if settings.tokenizer == CHAR and config.arch != "decoder":
        raise LmlabError(f"{OBJECTIVES[config.arch]} pre-training needs special tokens (padding, [MASK] or "
                         "sentinels) that a character-level tokenizer cannot hold; use --tokenizer bpe")
    identity = _identity(settings, config, sources, seq_len)
    run = run_on_main(lambda: open_run(settings.out, identity, settings.resume), env)
    try:
        run_on_main(lambda: _prepare_raw(sources, run, settings, seq_len, say), env)
        datasets = {s.name: load_prepared(s.prepared or run.data_dir / s.name) for s in sources}
        weights = settings.mix or _proportional(datasets)
        mixture = load_mixture({n: d.path for n, d in datasets.items()}, weights,
                               settings.train.steps * settings.train.batch_size, seed=settings.train.seed)
        say(f"data mixture over {settings.train.steps} steps of {settings.train.batch_size} sequences:\n"
            f"{mixture.report().format()}")
        tokenizer = prepare_tokenizer(next(iter(datasets.values())).load_tokenizer(), config.arch, seq_len)
        config = model_config_for(config, tokenizer)
        model = Transformer(config).init_weights(seed=settings.train.seed)
        trainer = Trainer(
            model, objective_for(config.arch, tokenizer, seq_len),
            {n: d.train for n, d in datasets.items()}, {n: d.validation for n, d in datasets.items()},
            settings.train, run, tokenizer=tokenizer, weights=weights, env=env, seq_len=seq_len, on_step=on_step,
        )
    except BaseException:
        if env.is_main:
            run.release()
            if not run.resume:
                _discard(run.path)  # a run that never started leaves nothing behind
        raise
    try:
        result = trainer.train()
        if env.is_main and result.model_dir is not None and not result.already_done:
            write_model_card(result.model_dir, _card_facts(settings, model, trainer, result, sources, env))
        return result
    finally:
        if env.is_main:
            run.release()


def _card_facts(settings: PretrainSettings, model: Transformer, trainer: Trainer, result: TrainResult,
                sources: list[_Source], env: DistEnv) -> CardFacts:
    """What the model card of a finished pre-training run says: data, objective, settings, the measured losses."""
    data = ["lmlab's shipped corpus" if s.name == SHIPPED and not s.raw and s.prepared is None else s.name
            for s in sources]
    results = []
    if result.val_loss is not None:
        results = [EvalResult("loss", result.val_loss, ", ".join(data)),
                   EvalResult("perplexity", result.val_perplexity, ", ".join(data))]
    train = settings.train
    hyper = {"sequence length": trainer.seq_len, "batch size (sequences)": train.batch_size, "peak lr": train.lr,
             "warmup steps": train.warmup, "weight decay": train.weight_decay,
             "betas": f"({train.beta1}, {train.beta2})",
             "dtype": train.dtype, "seed": train.seed}
    tokens = result.history[-1].get("tokens") if result.history else result.tokens
    return run_card_facts(Path(settings.out).name, model.config, sum(p.numel() for p in model.parameters()),
                          f"pre-training from random weights, {trainer.objective.name}, AdamW with warmup and cosine "
                          "decay", hyper, result.steps, tokens, result.wall_seconds,
                          data, results,
                          world_size=env.world_size)


def _proportional(datasets: dict[str, PreparedData]) -> dict[str, float]:
    """Weights by size: the mixture a plain concatenation of the datasets would give."""
    sizes = {name: len(data.train) for name, data in datasets.items()}
    total = sum(sizes.values())
    if total == 0:
        raise LmlabError("the training data holds no sequences")
    return {name: size / total for name, size in sizes.items()}


def _discard(folder: Path) -> None:
    """Empty a run folder this call created (open_run only creates runs in empty or missing folders)."""
    for child in folder.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()
