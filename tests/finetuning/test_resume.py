"""`lmlab finetune --resume`: a stopped fine-tune continues from its checkpoint to the weights of a run that never
stopped; a finished one is left as it is."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from lmlab.cli.main import main
from lmlab.errors import LmlabError
from lmlab.finetuning import recipe
from lmlab.data.finetune_data import DataFormat
from lmlab.finetuning.recipe import FinetuneSettings, finetune

from .conftest import colour_records, write_jsonl


def settings(model, data, out, **changes) -> FinetuneSettings:
    return FinetuneSettings(model=str(model), data=data, out=out, method="lora", steps=6, batch_size=4,
                            lora_dropout=0.1, lr=1e-2, format=DataFormat(max_length=64), progress=False, **changes)


class StopAtThree(recipe.EarlyStopping):
    """What Ctrl-C does after step 3."""

    def __call__(self, metrics, trainer):
        super().__call__(metrics, trainer)
        if metrics.step == 3:
            trainer.request_stop()


def test_a_stopped_finetune_resumes_to_the_uninterrupted_weights(tiny_model, tmp_path, monkeypatch, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", colour_records(24))
    whole = finetune(settings(tiny_model, data, tmp_path / "whole"))
    with monkeypatch.context() as patch:
        patch.setattr(recipe, "EarlyStopping", StopAtThree)
        first = finetune(settings(tiny_model, data, tmp_path / "split"))
    assert first.stopped_early and first.steps == 3
    with pytest.raises(LmlabError, match="pass --resume"):
        finetune(settings(tiny_model, data, tmp_path / "split"))
    resumed = finetune(settings(tiny_model, data, tmp_path / "split", resume=True))
    assert resumed.steps == 6 and not resumed.stopped_early and not resumed.already_done
    a = load_file(whole.adapter_dir / "adapter.safetensors")
    b = load_file(resumed.adapter_dir / "adapter.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    argv = ["finetune", str(tiny_model), "--data", str(data), "--out", str(tmp_path / "split"), "--method", "lora",
            "--steps", "6", "--batch-size", "4", "--lora-dropout", "0.1", "--lr", "1e-2", "--max-length", "64",
            "--no-progress", "--resume"]
    capsys.readouterr()
    assert main(argv) == 0
    assert "is finished: it reached step 6 (of --steps 6); nothing to do" in capsys.readouterr().out
    assert all(torch.equal(v, load_file(resumed.adapter_dir / "adapter.safetensors")[k]) for k, v in b.items())
