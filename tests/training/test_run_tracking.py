"""Run tracking: TensorBoard's own reader and the csv module get back exactly the losses of metrics.jsonl;
`lmlab runs` tabulates three runs (what differs, final and best losses) and draws their curves."""

from __future__ import annotations

import csv
import json

import matplotlib.image
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lmlab.cli.main import main

FAST = ["--steps", "6", "--batch-size", "4", "--eval-every", "3", "--eval-batches", "1", "--warmup", "1",
        "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, char_data):
    root = tmp_path_factory.mktemp("runs")
    for lr, logger in (("1e-3", "tensorboard"), ("3e-3", "csv"), ("1e-2", "jsonl")):
        assert main(["pretrain", "--data", str(char_data.path), "--out", str(root / f"lr{lr}"), "--lr", lr,
                     "--logger", logger, *FAST]) == 0
    return root


def metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_events_hold_the_losses_of_metrics_jsonl(runs):
    records = metrics(runs / "lr1e-3")
    events = EventAccumulator(str(runs / "lr1e-3" / "tensorboard"))
    events.Reload()
    train = events.Scalars("train/loss")
    assert [e.step for e in train] == [r["step"] for r in records]
    assert [e.value for e in train] == pytest.approx([r["loss"] for r in records], rel=1e-6)  # stored as float32
    val = events.Scalars("validation/loss")
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in val] == [
        (r["step"], r["val_loss"]) for r in records if "val_loss" in r]


def test_csv_rows_are_the_jsonl_records(runs):
    records = metrics(runs / "lr3e-3")
    with open(runs / "lr3e-3" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [r["step"] for r in records]
    assert [float(r["loss"]) for r in rows] == [r["loss"] for r in records]
    assert [r["val_loss"] for r in rows] == [str(r["val_loss"]) if "val_loss" in r else "" for r in records]


def test_runs_table_and_plot(runs, tmp_path, capsys):
    plot = tmp_path / "curves.png"
    assert main(["runs", str(runs), "--plot", str(plot)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split("  ")
    assert [h.strip() for h in header if h.strip()][:2] == ["run", "train.lr"]  # the one setting that differs
    for name, lr in (("lr1e-3", 0.001), ("lr3e-3", 0.003), ("lr1e-2", 0.01)):
        row = next(line.split() for line in lines if line.startswith(name + " "))
        records = metrics(runs / name)
        best = min((r for r in records if "val_loss" in r), key=lambda r: r["val_loss"])
        assert float(row[1]) == lr and int(row[2]) == 6 and row[3] == f"{records[-1]['tokens']:,}"
        assert float(row[4]) == pytest.approx(records[-1]["loss"], abs=5e-4)
        assert row[6:8] == [f"{best['val_loss']:.4g}", f"({best['step']})"]
        assert row[8] != "-"  # the wall time the model card recorded
    assert matplotlib.image.imread(plot).shape[2] in (3, 4)


def test_runs_refuses_a_folder_without_runs(tmp_path, capsys):
    assert main(["runs", str(tmp_path)]) == 1
    assert "no training runs" in capsys.readouterr().err


def test_unknown_logger_is_refused(char_data, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--data", str(char_data.path), "--out", str(tmp_path / "o"), "--logger", "wandb"])
    assert "invalid choice" in capsys.readouterr().err
