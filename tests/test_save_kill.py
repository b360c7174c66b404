"""Issue 16's guarantee, tried for real: a process killed (SIGKILL) at random moments while it saves an artifact
over and over leaves the old or the new complete copy of it, never neither, and never a mix."""

from __future__ import annotations

import copy
import multiprocessing
import random
from pathlib import Path

import pytest
import torch

from lmlab import io
from lmlab.config import get_preset
from lmlab.data.pipeline import PrepareSettings, char_tokenizer, prepare_documents
from lmlab.hub.checkpoint import export_hf, save_checkpoint
from lmlab.models import Transformer
from lmlab.models.lora import apply_lora, save_adapter
from lmlab.hub.quantized_checkpoint import save_quantized
from lmlab.quantization.quantized_linear import quantize_model
from lmlab.quantization.schemes import QuantSpec
from lmlab.tokenizers import save_tokenizer_folder
from lmlab.training.checkpoint import save_training_checkpoint
from lmlab.training.distributed import DistEnv, make_strategy
from lmlab.training.sharded_checkpoint import save_sharded

KILLS_PER_KIND = 8
PAUSE = "0.02"  # seconds between the steps of a save (lmlab.io.PAUSE_ENV): each step is as likely to be hit
FORKSERVER = multiprocessing.get_context("forkserver")
FORKSERVER.set_forkserver_preload(["lmlab.hub.checkpoint", "lmlab.hub.quantized_checkpoint", "lmlab.models.lora",
                                   "lmlab.training.checkpoint", "lmlab.training.sharded_checkpoint",
                                   "lmlab.data.pipeline"])


def _model(version: int) -> Transformer:
    return Transformer(get_preset("tiny-llama")).init_weights(seed=version).eval()


def _tokenizer(version: int):
    return char_tokenizer(["the cat sat on the mat", "a dog, a log"][version:] + ["!?"])


def _plot(version: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure()
    figure.add_subplot().plot([0, 1, 2], [version, 2 - version, version])
    io.save_figure(figure, out)


def _trained(version: int) -> tuple[Transformer, torch.optim.Optimizer]:
    model = _model(version)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    optimizer.step()
    return model, optimizer


def _training_checkpoint(version: int, out: Path) -> None:
    """What the trainer writes every --save-every steps: weights, optimizer state, random states, step."""
    model, optimizer = _trained(version)
    torch.manual_seed(version)
    env = DistEnv()
    save_training_checkpoint(out, model, optimizer, make_strategy(env), env, None, {"step": version + 1},
                             _tokenizer(version))


def _sharded_checkpoint(version: int, out: Path) -> None:
    """What an FSDP run writes (torch.distributed.checkpoint shards, one rank here)."""
    model, optimizer = _trained(version)
    save_sharded(out, model, optimizer, DistEnv(), _tokenizer(version))


def _adapter(version: int, out: Path) -> None:
    model = _model(0)
    report = apply_lora(model, "q,v", rank=2, seed=version)
    save_adapter(model, out, "tiny-llama", report, overwrite=True)


SAVES = {  # one artifact kind each: save version 0 or 1 of it to `out`, replacing what is there
    "checkpoint": lambda v, out: save_checkpoint(_model(v), out, _tokenizer(v), overwrite=True),
    "training-checkpoint": _training_checkpoint,
    "sharded-checkpoint": _sharded_checkpoint,
    "hf-export": lambda v, out: export_hf(_model(v), out, _tokenizer(v), overwrite=True),
    "quantized": lambda v, out: save_quantized(quantize_model(copy.deepcopy(_model(v)), QuantSpec()), out,
                                               overwrite=True),
    "adapter": _adapter,
    "tokenizer": lambda v, out: save_tokenizer_folder(_tokenizer(v), out),
    "json-file": lambda v, out: io.write_json(out, {"version": v, "loss": [0.5 * v] * 2000}),
    "plot": _plot,
}


def _save_forever(kind: str, out: str, ready) -> None:
    import os

    os.environ[io.PAUSE_ENV] = PAUSE
    torch.set_num_threads(1)
    ready.set()
    version = 1
    while True:
        SAVES[kind](version, Path(out))
        version = 1 - version


def contents(path: Path) -> dict[str, bytes]:
    """Every file of an artifact and its bytes (the marker aside: it holds the time of the save); the index of
    torch.distributed.checkpoint shards (.metadata, a pickle that differs from save to save) stands for the
    tensors it loads."""
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): _loaded(p.parent) if p.name == ".metadata" else p.read_bytes()
            for p in sorted(path.rglob("*")) if p.is_file() and p.name != io.MARKER}


def _loaded(shards: Path) -> bytes:
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    state = _load_state_dict_from_keys(checkpoint_id=shards)
    flat: dict[str, object] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for key in sorted(value, key=str):
                walk(f"{prefix}.{key}", value[key])
        else:
            flat[prefix] = value.numpy().tobytes() if isinstance(value, torch.Tensor) else repr(value).encode()

    walk("", state)
    return b"".join(key.encode() + b"=" + value for key, value in flat.items())


@pytest.mark.parametrize("kind", list(SAVES))
def test_a_save_killed_at_random_leaves_the_old_or_the_new_copy(kind, tmp_path):
    versions = []
    for version in (0, 1):
        SAVES[kind](version, tmp_path / f"v{version}")
        versions.append(contents(tmp_path / f"v{version}"))
    assert versions[0] != versions[1]
    out = tmp_path / "artifact"
    SAVES[kind](0, out)
    rng = random.Random(kind)
    for _ in range(KILLS_PER_KIND):
        ready = FORKSERVER.Event()
        child = FORKSERVER.Process(target=_save_forever, args=(kind, str(out), ready))
        child.start()
        ready.wait()
        child.join(rng.uniform(0.0, 0.5))
        child.kill()
        child.join()
        io.recover(out)  # what the next save, or the next run, does first
        assert contents(out) in versions
        io.clean_leftovers(tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["artifact", "v0", "v1"])


def _prepare(out: str, ready) -> None:
    import os

    os.environ[io.PAUSE_ENV] = PAUSE
    torch.set_num_threads(1)
    ready.set()
    _prepare_corpus(Path(out))


def _prepare_corpus(out: Path) -> None:
    words = random.Random(0)
    vocabulary = "the a cat dog sat ran on under mat log red old small quick and then was is".split()
    documents = [" ".join(words.choice(vocabulary) for _ in range(80)) + "." for _ in range(60)]
    prepare_documents(documents, "char", out, PrepareSettings(seq_len=32, shard_tokens=2048), name="corpus",
                      progress=False)


def test_a_data_prepare_killed_at_random_leaves_no_dataset_or_the_whole_one(tmp_path):
    """Data shards are written once (a prepared folder is never replaced by another dataset): a kill leaves
    nothing (the next run starts again) or the complete dataset, never some of its shards."""
    _prepare_corpus(tmp_path / "reference")
    whole = contents(tmp_path / "reference")
    assert len([name for name in whole if name.endswith(".bin")]) > 1  # several shards, written one by one
    rng = random.Random("data")
    outcomes = set()
    for trial in range(KILLS_PER_KIND):
        out = tmp_path / f"data{trial}"
        ready = FORKSERVER.Event()
        child = FORKSERVER.Process(target=_prepare, args=(str(out), ready))
        child.start()
        ready.wait()
        child.join(rng.uniform(0.0, 0.2))  # a prepare with the pauses takes ~0.16 s alone
        child.kill()
        child.join()
        io.recover(out)
        assert not out.exists() or contents(out) == whole
        outcomes.add(out.exists())
        io.clean_leftovers(tmp_path)
        assert {p.name for p in tmp_path.iterdir()} <= {"reference"} | {f"data{t}" for t in range(trial + 1)}
    assert False in outcomes  # some kill landed before the end (the test saw a prepare cut short)
