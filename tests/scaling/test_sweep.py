"""The IsoFLOP grid (C = 6ND, sizes around N*), a tiny real sweep that resumes, and bad input."""

import json
import math

import pytest

from lmlab.data.corpus import default_corpus
from lmlab.errors import LmlabError
from lmlab.models import Transformer
from lmlab.planning.params import count_parameters
from lmlab.scaling.sweep import (
    DEFAULT_SHAPES,
    RESULTS_FILE,
    Shape,
    SweepSettings,
    parse_budgets,
    parse_shapes,
    plan_runs,
    read_results,
    run_sweep,
)


def test_ladder_sizes_are_the_models_parameter_counts():
    for shape in (Shape(8, 2), Shape(48, 2), Shape(64, 3)):
        config = shape.config(vocab_size=65, seq_len=64)
        assert count_parameters(config) == sum(p.numel() for p in Transformer(config).parameters())
        assert (config.d_model, config.n_layer, config.n_head, config.d_ff) == (shape.d_model, shape.n_layer, 2,
                                                                                4 * shape.d_model)


def test_grid_spends_each_budget_as_6ND_around_the_centre(tmp_path):
    settings = SweepSettings(data=tmp_path, out=tmp_path / "out")
    runs, skipped = plan_runs(settings, vocab_size=65)
    for budget in settings.budgets:
        sizes = [r.n_params for r in runs if r.budget == budget]
        centre = math.sqrt(budget / (6 * settings.tokens_per_param))
        assert len(sizes) >= 3 and min(sizes) < centre < max(sizes)
    for run in runs:
        assert run.tokens == run.steps * settings.batch_size * settings.seq_len >= settings.min_steps
        # whole steps: 6ND is the budget to within half a step's compute
        assert abs(run.flops - run.budget) <= 6 * run.n_params * settings.tokens_per_step / 2
    assert all("fewer than 50" in reason for reason in skipped)
    assert {s.label for s in DEFAULT_SHAPES} >= {r.shape.label for r in runs}


def test_parse_sizes_and_budgets():
    assert parse_shapes("32x2, 64X3") == (Shape(32, 2), Shape(64, 3))
    assert parse_budgets("3e11,1e10,1e10") == (1e10, 3e11)
    for bad in ("64", "33x2", "32x0", ""):
        with pytest.raises(LmlabError):
            parse_shapes(bad)
    for bad in ("abc", "-1", "0", ","):
        with pytest.raises(LmlabError):
            parse_budgets(bad)


def test_tiny_sweep_trains_records_and_resumes(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(default_corpus(n_documents=300), encoding="utf-8")
    settings = SweepSettings(data=corpus, out=tmp_path / "sweep", budgets=(3e7,), shapes=(Shape(8, 1), Shape(16, 1)),
                             per_budget=2, spread=2.0, tokens_per_param=1.0, seq_len=16, batch_size=4,
                             eval_batches=2, min_steps=5, jobs=2)
    result = run_sweep(settings, progress=False)
    assert sorted(result.trained) == ["C3e07-16x1", "C3e07-8x1"] and result.threads_per_job == 1
    records = read_results(settings.out)
    vocab = json.loads((settings.out / "data" / "manifest.json").read_text())["vocab_size"]
    for record in records:
        assert record.flops == pytest.approx(3e7, rel=0.1)
        assert 0 < record.val_loss < math.log(vocab)  # learned something: below the uniform guess
        assert (settings.out / "runs" / record.name / "model").is_dir()
    again = run_sweep(settings, progress=False)
    assert again.trained == [] and again.records == records
    with pytest.raises(LmlabError, match="other training settings"):
        run_sweep(SweepSettings(**{**vars(settings), "lr": 1e-3}), progress=False)


def test_sweep_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text", encoding="utf-8")
    with pytest.raises(LmlabError, match="not empty"):
        run_sweep(SweepSettings(data=corpus, out=tmp_path), progress=False)
    with pytest.raises(LmlabError, match="no such file"):
        run_sweep(SweepSettings(data=tmp_path / "missing.txt", out=tmp_path / "new"), progress=False)
    with pytest.raises(LmlabError, match="not a scaling sweep"):
        read_results(tmp_path)
    assert not (tmp_path / RESULTS_FILE).exists()
