"""Model cards: a fine-tune's card parses with huggingface_hub, its model-index carries the evaluation loss the
run measured, and exports (GGUF from the adapter, merged first; Hugging Face folder) keep those facts."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from huggingface_hub import ModelCard

from lmlab.cli.main import main
from lmlab.hub.export import export_model

from .conftest import colour_records, write_jsonl


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    data = write_jsonl(root / "colours.jsonl", colour_records(24))
    out = root / "colour-lora"
    assert main(["finetune", str(tiny_model), "--data", str(data), "--steps", "3", "--batch-size", "4",
                 "--max-length", "64", "--lora-targets", "all-linear", "--lr", "1e-2", "--no-progress",
                 "--out", str(out)]) == 0
    return out


def test_card_parses_and_carries_the_measured_loss(run, tiny_model):
    measured = json.loads((run / "finetune.json").read_text())["scores"]["val_loss"]
    card = ModelCard.load(run / "model" / "README.md")
    assert card.data.library_name == "lmlab" and card.data.pipeline_tag == "text-generation"
    assert card.data.datasets == ["colours.jsonl"]
    assert card.data.base_model == str(tiny_model)
    [result] = card.data.eval_results  # parsed from model-index by huggingface_hub
    assert result.metric_type == "loss" and result.metric_value == measured
    assert result.task_type == "text-generation" and result.dataset_split == "validation"
    assert result.dataset_name == "colours.jsonl (held-out 10%)"
    for section in ("## Training details", "## Evaluation", "## Intended use",
                    "## Limitations, bias, risks and privacy", "## Environmental impact"):
        assert section in card.text
    assert "LoRA (Hu et al. 2021), rank 8" in card.text and "Steps: 3" in card.text
    hyperparameters = next(line for line in card.text.splitlines() if line.startswith("- Hyperparameters"))
    assert "epochs" not in hyperparameters  # --steps 3 replaced the default 3 epochs
    assert "g CO2e (estimated" in card.text and "kWh" in card.text
    assert ModelCard.load(run / "adapter" / "README.md").data.eval_results[0].metric_value == measured


def test_exports_keep_the_card_and_merge_lora_first(run, tmp_path):
    from_adapter = export_model(str(run / "adapter"), tmp_path / "a", "gguf", "f32")
    from_merged = export_model(str(run / "model"), tmp_path / "m", "gguf", "f32")
    a, m = gguf.GGUFReader(from_adapter), gguf.GGUFReader(from_merged)
    for x, y in zip(a.tensors, m.tensors, strict=True):
        assert x.name == y.name
        np.testing.assert_allclose(np.asarray(x.data), np.asarray(y.data), rtol=0, atol=1e-6, err_msg=x.name)
    measured = json.loads((run / "finetune.json").read_text())["scores"]["val_loss"]
    card = ModelCard.load(tmp_path / "a" / "README.md")
    assert card.data.library_name == "gguf" and "gguf" in card.data.tags and "f32" in card.data.tags
    assert card.data.eval_results[0].metric_value == measured
    export_model(str(run / "model"), tmp_path / "hf", "hf", "f32")
    hf = ModelCard.load(tmp_path / "hf" / "README.md")
    assert hf.data.library_name == "transformers" and hf.data.eval_results[0].metric_value == measured
