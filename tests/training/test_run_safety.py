"""Run folders are owned (locks, stale takeover), failures are failures (non-finite loss), a finished run is left
as it is, and a killed save leaves its leftovers only until the next start."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lmlab.cli.main import main
from lmlab.errors import LmlabError
from lmlab.io import TEMP_TAG, stage_folder
from lmlab.training.run_lock import LOCK_FILE, is_lock_file, lock_run, rank_lock_file
from lmlab.training.run_folder import open_run

from .test_trainer import make_trainer


def strict_json_lines(path) -> list[dict]:
    """Parse JSON Lines as the JSON standard says: NaN and Infinity are not JSON."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def test_a_second_writer_is_refused_while_the_first_holds_the_run(tmp_path):
    run = open_run(tmp_path / "run", {"a": 1})
    with pytest.raises(LmlabError, match=r"is in use by another lmlab run \(pid \d+ on .*, since .*\)"):
        open_run(tmp_path / "run", {"a": 1}, resume=True)
    run.release()
    assert open_run(tmp_path / "run", {"a": 1}, resume=True).resume


def test_a_live_worker_keeps_the_run_owned_after_its_launcher_is_gone(tmp_path):
    open_run(tmp_path / "run", {"a": 1}).release()
    worker = lock_run(tmp_path / "run", rank=1)  # a rank of a launcher that was killed
    with pytest.raises(LmlabError, match="in use by another lmlab run"):
        open_run(tmp_path / "run", {"a": 1}, resume=True)
    worker.release()
    open_run(tmp_path / "run", {"a": 1}, resume=True).release()


def test_the_lock_of_a_dead_process_is_taken_over_with_a_note(tmp_path, capsys):
    open_run(tmp_path / "run", {"a": 1}).release()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has ended: its flock went with it, its file stayed
    for name in (LOCK_FILE, rank_lock_file(0)):
        (tmp_path / "run" / name).write_text(json.dumps({"pid": pid, "host": "here", "started": 0.0}))
    capsys.readouterr()
    open_run(tmp_path / "run", {"a": 1}, resume=True).release()
    assert f"note: took over the lock of {tmp_path / 'run'} from pid {pid} on here" in capsys.readouterr().out


def test_a_resumed_run_removes_only_lmlabs_leftovers(tmp_path, capsys):
    open_run(tmp_path / "run", {"a": 1}).release()
    (tmp_path / "run" / "checkpoints").mkdir()
    stage_folder(tmp_path / "run" / "checkpoints" / "step-0000002", "training-checkpoint")  # killed mid-save
    mine = tmp_path / "run" / f".notes{TEMP_TAG}new-1"  # lmlab's name, but no marker
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    open_run(tmp_path / "run", {"a": 1}, resume=True).release()
    assert "removed 1 temporary file(s) or folder(s)" in capsys.readouterr().out
    assert list((tmp_path / "run" / "checkpoints").iterdir()) == [] and (mine / "keep.txt").is_file()


class Poison:
    """A forward hook that turns the model's output into NaN during the chosen training steps."""

    def __init__(self, steps: set[int]):
        self.steps, self.step = steps, 0

    def on_step(self, metrics, trainer):
        self.step = metrics.step

    def __call__(self, module, inputs, output):
        if module.training and self.step + 1 in self.steps:
            return output * float("nan")
        return output


def poisoned_trainer(data, out, steps: set[int], **train):
    poison = Poison(steps)
    trainer = make_trainer(data, out, "decoder", on_step=poison.on_step, dropout=0.0, **train)
    trainer.model.decoder.final_norm.register_forward_hook(poison)
    return trainer


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(char_data, tmp_path):
    trainer = poisoned_trainer(char_data, tmp_path / "run", {5}, checkpoint_every=2)
    with pytest.raises(LmlabError, match=r"training diverged at step 5: the loss is nan; stopped without saving the "
                                         r"model \(its last checkpoint, step-0000004, is kept"):
        trainer.train()
    trainer.run.release()
    run = tmp_path / "run"
    assert not (run / "model").exists()
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-0000004"]
    records = strict_json_lines(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5] and records[-1]["loss"] is None


def test_skip_nonfinite_skips_the_bad_steps_without_an_update(char_data, tmp_path):
    trainer = poisoned_trainer(char_data, tmp_path / "run", {5, 6}, skip_nonfinite=2)
    weights = {}
    check = trainer.on_step

    def on_step(metrics, trainer):
        check(metrics, trainer)
        weights[metrics.step] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    trainer.on_step = on_step
    result = trainer.train()
    assert not result.stopped_early and result.steps == 8
    assert all(torch.equal(weights[4][k], weights[6][k]) for k in weights[4])  # steps 5 and 6 changed nothing
    assert not torch.equal(weights[6]["tok_emb.weight"], weights[7]["tok_emb.weight"])
    records = strict_json_lines(tmp_path / "run" / "metrics.jsonl")
    assert [r.get("skipped_steps") for r in records] == [None] * 4 + [1, 2, 2, 2]
    assert records[4]["loss"] is None and records[5]["loss"] is None


def test_one_more_bad_step_than_allowed_stops_the_run(char_data, tmp_path):
    with pytest.raises(LmlabError, match="training diverged at step 6"):
        poisoned_trainer(char_data, tmp_path / "run", {5, 6}, skip_nonfinite=1).train()


def run_files(run) -> dict:
    """Every file of a run folder with its time and bytes (the lock files aside: they say who holds the run)."""
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file() and not is_lock_file(p.name)}


def test_resuming_a_finished_run_from_the_cli_says_so_and_changes_nothing(char_data, tmp_path, capsys):
    argv = ["pretrain", "--data", str(char_data.path), "--out", str(tmp_path / "run"), "--steps", "2",
            "--batch-size", "4", "--eval-every", "2", "--eval-batches", "1", "--no-progress"]
    assert main(argv) == 0
    files = run_files(tmp_path / "run")
    for steps in ("2", "1"):
        capsys.readouterr()
        assert main([*argv[:argv.index("--steps") + 1], steps, *argv[argv.index("--steps") + 2:], "--resume"]) == 0
        assert "is finished: it reached step 2" in capsys.readouterr().out
        assert run_files(tmp_path / "run") == files


def test_resuming_a_finished_run_changes_nothing(char_data, tmp_path):
    make_trainer(char_data, tmp_path / "run", "decoder", steps=4).train()
    files = run_files(tmp_path / "run")
    for steps in (4, 2):
        result = make_trainer(char_data, tmp_path / "run", "decoder", resume=True, steps=steps).train()
        assert result.already_done and result.steps == 4 and result.model_dir == tmp_path / "run" / "model"
        assert result.train_loss == strict_json_lines(tmp_path / "run" / "metrics.jsonl")[-1]["loss"]
        assert run_files(tmp_path / "run") == files
