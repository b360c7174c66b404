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
from lmlab.data.pipeline import char_tokenizer
from lmlab.hub.checkpoint import export_hf, save_checkpoint
from lmlab.models import Transformer
from lmlab.models.lora import apply_lora, save_adapter
from lmlab.hub.quantized_checkpoint import save_quantized
from lmlab.quantization.quantized_linear import quantize_model
from lmlab.quantization.schemes import QuantSpec
from lmlab.tokenizers import save_tokenizer_folder

KILLS_PER_KIND = 8
PAUSE = "0.02"  # seconds between the steps of a save (lmlab.io.PAUSE_ENV): each step is as likely to be hit
FORKSERVER = multiprocessing.get_context("forkserver")
FORKSERVER.set_forkserver_preload(["lmlab.hub.checkpoint", "lmlab.hub.quantized_checkpoint", "lmlab.models.lora"])


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


def _adapter(version: int, out: Path) -> None:
    model = _model(0)
    report = apply_lora(model, "q,v", rank=2, seed=version)
    save_adapter(model, out, "tiny-llama", report, overwrite=True)


SAVES = {  # one artifact kind each: save version 0 or 1 of it to `out`, replacing what is there
    "checkpoint": lambda v, out: save_checkpoint(_model(v), out, _tokenizer(v), overwrite=True),
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
    """Every file of an artifact and its bytes (the marker aside: it holds the time of the save)."""
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != io.MARKER}


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
