"""Reward models: the Bradley-Terry loss against the formula by hand, and `lmlab finetune --task reward`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmlab.alignment.preferences import PairCollator, count_pairs, load_preferences
from lmlab.alignment.reward import is_reward_model, reward_loss_sum, score_pairs
from lmlab.cli.main import main
from lmlab.data.finetune_data import DataFormat
from lmlab.models.heads import attach_head
from lmlab.hub.checkpoint import load_checkpoint
from lmlab.tokenizers import load_tokenizer
from tests.alignment.conftest import colour_pairs, write_jsonl


def test_reward_loss_is_the_bradley_terry_formula(tmp_path, tiny_model):
    path = write_jsonl(tmp_path / "p.jsonl", colour_pairs(3))
    pairs = load_preferences(path, DataFormat(task="reward"), load_tokenizer(tiny_model), validation=path).train
    model = attach_head(load_checkpoint(tiny_model), "sequence-classification", ["reward"], seed=3).eval()
    assert is_reward_model(model.config)
    batch = PairCollator(pad_id=0, scored="last")(pairs)
    with torch.no_grad():
        ours = float(reward_loss_sum(model, batch)) / count_pairs(batch)

        def reward(tokens):  # each sequence alone, no padding: the head's scalar at its last token
            return float(model(torch.tensor([tokens])).logits[0, 0])
        by_hand = [(reward(p.prompt + p.chosen), reward(p.prompt + p.rejected)) for p in pairs]
    expected = sum(math.log(1 + math.exp(-(c - r))) for c, r in by_hand) / len(pairs)  # -log sigma(rc - rr)
    assert ours == pytest.approx(expected, rel=1e-5)
    scores = score_pairs(model, pairs, pad_id=0, batch_size=2)
    assert scores.accuracy == pytest.approx(sum(c > r for c, r in by_hand) / 3)
    assert scores.margin == pytest.approx(sum(c - r for c, r in by_hand) / 3, abs=1e-5)
    assert scores.loss == pytest.approx(expected, rel=1e-5)


def test_finetune_task_reward_learns_the_preference(tmp_path, tiny_model, capsys):
    records = [{**r, "rejected": "I will not say"} for r in colour_pairs(48)]  # an answer beats a refusal
    train = write_jsonl(tmp_path / "train.jsonl", records)
    code = main(["finetune", str(tiny_model), "--task", "reward", "--data", str(train), "--val", str(train),
                 "--method", "full", "--lr", "1e-2", "--steps", "30", "--batch-size", "8", "--eval-metric",
                 "accuracy", "--eval-every", "30", "--no-progress", "--out", str(tmp_path / "rm")])
    assert code == 0
    summary = json.loads((tmp_path / "rm" / "finetune.json").read_text())
    assert summary["task"] == "reward"
    assert summary["scores"]["accuracy"] >= 0.9 and summary["scores"]["margin"] > 0
    assert is_reward_model(load_checkpoint(tmp_path / "rm" / "model").config)


def test_finetune_reward_lora_trains_adapters_and_the_head(tmp_path, tiny_model):
    train = write_jsonl(tmp_path / "train.jsonl", colour_pairs(16))
    code = main(["finetune", str(tiny_model), "--task", "reward", "--data", str(train), "--steps", "2",
                 "--batch-size", "4", "--no-progress", "--out", str(tmp_path / "rm")])
    assert code == 0
    summary = json.loads((tmp_path / "rm" / "finetune.json").read_text())
    assert {"val_loss", "accuracy", "margin"} <= set(summary["scores"])
    assert is_reward_model(load_checkpoint(tmp_path / "rm" / "model").config)
