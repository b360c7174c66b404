"""The training loop: exact resume, accumulation, evaluation, checkpoints that load, run-folder safety."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from lmlab.config import get_preset
from lmlab.errors import LmlabError
from lmlab.hub.resolve import load_model
from lmlab.models import Transformer
from lmlab.training.objectives import model_config_for, objective_for, prepare_tokenizer
from lmlab.training.pretrain import DEFAULT_PRESETS
from lmlab.data.mixture import MixtureSampler
from lmlab.training.run_folder import open_run
from lmlab.training.trainer import TrainConfig, Trainer, stream

from .conftest import SEQ_LEN


def make_trainer(data, out: Path, arch: str, resume: bool = False, on_step=None, dropout: float = 0.1,
                 **train) -> Trainer:
    tokenizer = prepare_tokenizer(data.load_tokenizer(), arch, SEQ_LEN)
    config = model_config_for(get_preset(DEFAULT_PRESETS[arch]).replace(dropout=dropout), tokenizer)
    model = Transformer(config).init_weights(seed=0)
    settings = dict(steps=8, batch_size=4, grad_accum=2, warmup=2, eval_every=3, eval_batches=2, progress=False)
    settings.update(train)
    run = open_run(out, {"arch": arch, "dropout": dropout}, resume)
    return Trainer(model, objective_for(arch, tokenizer, SEQ_LEN), {"stories": data.train},
                   {"stories": data.validation}, TrainConfig(**settings), run, tokenizer=tokenizer, on_step=on_step,
                   peak_flops=1e9)


def stop_at(step: int, by_signal: bool):
    def on_step(metrics, trainer):
        if metrics.step == step:
            if by_signal:
                os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does
            else:
                trainer.request_stop()
    return on_step


def losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


@pytest.mark.parametrize("arch, by_signal", [("decoder", True), ("encoder", False), ("encoder-decoder", False)])
def test_resume_is_bitwise_identical(bpe_data, tmp_path, arch, by_signal):
    """Stopped after step 4 and resumed, a run ends at step 8 with the very weights and optimizer moments
    of an uninterrupted run: dropout (p=0.1), masking/span noise and data order all continue exactly."""
    whole = make_trainer(bpe_data, tmp_path / "whole", arch).train()
    assert not whole.stopped_early
    first = make_trainer(bpe_data, tmp_path / "split", arch, on_step=stop_at(4, by_signal)).train()
    assert first.stopped_early and first.steps == 4
    assert [p.name for p in (tmp_path / "split" / "checkpoints").iterdir()] == ["step-0000004"]
    assert not (tmp_path / "split" / "model").exists()
    second = make_trainer(bpe_data, tmp_path / "split", arch, resume=True).train()
    assert second.steps == 8 and not second.stopped_early

    a = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    b = load_file(tmp_path / "split" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    moments_a = load_file(tmp_path / "whole" / "checkpoints" / "step-0000008" / "optimizer.safetensors")
    moments_b = load_file(tmp_path / "split" / "checkpoints" / "step-0000008" / "optimizer.safetensors")
    assert all(torch.equal(moments_a[k], moments_b[k]) for k in moments_a)
    assert losses(tmp_path / "whole") == losses(tmp_path / "split")
    assert [s for s, _ in losses(tmp_path / "split")] == list(range(1, 9))


def test_gradient_accumulation_gives_the_full_batch_gradient(char_data, tmp_path):
    one = make_trainer(char_data, tmp_path / "one", "decoder", dropout=0.0, grad_accum=1, steps=5).train()
    four = make_trainer(char_data, tmp_path / "four", "decoder", dropout=0.0, grad_accum=4, steps=5).train()
    for a, b in zip(one.history, four.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)


def test_validation_loss_is_the_mean_token_loss_of_the_split(char_data, tmp_path):
    result = make_trainer(char_data, tmp_path / "run", "decoder", dropout=0.0, steps=3, eval_batches=None).train()
    model = load_model(str(tmp_path / "run" / "model")).model
    chunks = torch.stack([char_data.validation[i] for i in range(len(char_data.validation))])
    with torch.no_grad():
        logits = model(chunks[:, :-1]).logits
    expected = F.cross_entropy(logits.flatten(0, 1), chunks[:, 1:].flatten()).item()
    assert result.val_loss == pytest.approx(expected, abs=1e-5)
    assert result.val_perplexity == pytest.approx(torch.tensor(expected).exp().item(), rel=1e-5)


def test_final_model_loads_with_its_tokenizer(bpe_data, tmp_path):
    trainer = make_trainer(bpe_data, tmp_path / "run", "decoder", steps=2)
    result = trainer.train()
    loaded = load_model(str(result.model_dir))
    assert loaded.tokenizer is not None
    text = "Once upon a time, there was a kind girl named Mia."
    assert loaded.tokenizer.decode(loaded.tokenizer.encode(text)) == text
    assert loaded.model.config == trainer.model.config
    state = trainer.model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in loaded.model.state_dict().items())
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0


def test_run_folder_is_never_taken_over(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(LmlabError, match="holds no lmlab training run"):
        open_run(tmp_path / "notes", {"a": 1})
    open_run(tmp_path / "run", {"a": 1})
    with pytest.raises(LmlabError, match="pass --resume"):
        open_run(tmp_path / "run", {"a": 1})
    with pytest.raises(LmlabError, match="different training run .*differs in: a"):
        open_run(tmp_path / "run", {"a": 2}, resume=True)
    assert open_run(tmp_path / "run", {"a": 1}, resume=True).resume
    with pytest.raises(LmlabError, match="nothing to resume"):
        open_run(tmp_path / "empty", {"a": 1}, resume=True)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


def test_batch_must_split_over_micro_batches(char_data, tmp_path):
    with pytest.raises(LmlabError, match="multiple of 3"):
        make_trainer(char_data, tmp_path / "run", "decoder", batch_size=4, grad_accum=3)


def test_stream_draws_what_the_mixture_sampler_draws():
    sampler = MixtureSampler({"a": 7, "b": 3}, {"a": 0.3, "b": 0.7}, 60, seed=5)
    assert list(stream(sampler)) == list(sampler)
    assert list(stream(sampler, start=25)) == list(sampler)[25:]


def test_bf16_autocast_trains_close_to_fp32(char_data, tmp_path):
    fp32 = make_trainer(char_data, tmp_path / "fp32", "decoder", dropout=0.0, steps=3).train()
    bf16 = make_trainer(char_data, tmp_path / "bf16", "decoder", dropout=0.0, steps=3, dtype="bf16").train()
    for a, b in zip(fp32.history, bf16.history, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=0.02)  # bf16 keeps 8 bits of mantissa
    weights = load_file(tmp_path / "bf16" / "model" / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in weights.values())  # fp32 master weights
