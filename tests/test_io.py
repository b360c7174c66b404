"""lmlab.io: the claim rule for output folders, atomic files, and a folder replace that survives a crash at
every step (simulated by failing the step's system call, then running the next start's recovery)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from lmlab import io
from lmlab.cli.main import main
from lmlab.errors import LmlabError
from tiny import make_tiny_checkpoint


def _write_version(folder, version: str) -> None:
    with io.replace_folder(folder, "model", overwrite=True) as staging:
        (staging / "weights.txt").write_text(version)
        (staging / "config.txt").write_text(version)


def _contents(folder) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.iterdir() if p.name != io.MARKER}


def test_a_new_or_empty_folder_is_claimed_and_marked(tmp_path):
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "new" / "deep", tmp_path / "empty"):
        _write_version(out, "v1")
        assert _contents(out) == {"weights.txt": "v1", "config.txt": "v1"}
        marker = json.loads((out / io.MARKER).read_text())
        assert marker["kind"] == "model" and marker["format"] == io.MARKER_FORMAT and "created" in marker


def test_a_users_folder_is_refused_even_with_overwrite_and_kept(tmp_path):
    mydocs = tmp_path / "mydocs"
    mydocs.mkdir()
    (mydocs / "thesis.txt").write_text("x")
    for overwrite in (False, True):
        with pytest.raises(LmlabError, match=r"\(thesis.txt\) and was not written by lmlab"):
            with io.replace_folder(mydocs, "model", overwrite=overwrite):
                pytest.fail("the block must not run")
    assert [p.name for p in mydocs.iterdir()] == ["thesis.txt"] and (mydocs / "thesis.txt").read_text() == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["mydocs"]  # no staging folder either


def test_an_lmlab_folder_is_replaced_only_with_overwrite_and_only_by_a_compatible_kind(tmp_path):
    out = tmp_path / "m"
    _write_version(out, "v1")
    with pytest.raises(LmlabError, match="already holds an lmlab model; choose another folder or allow overwriting"):
        io.claim_folder(out, "model")
    with pytest.raises(LmlabError, match="holds an lmlab model, not a tokenizer"):
        io.claim_folder(out, "tokenizer", overwrite=True)
    assert io.claim_folder(out, "hf-model", overwrite=True)  # both are model folders
    _write_version(out, "v2")
    assert _contents(out) == {"weights.txt": "v2", "config.txt": "v2"}


def test_the_current_folder_and_its_parents_are_refused(tmp_path, monkeypatch):
    inner = tmp_path / "work"
    inner.mkdir()
    monkeypatch.chdir(inner)
    for out in (".", inner, tmp_path):
        with pytest.raises(LmlabError, match="is the current folder or holds it"):
            io.claim_folder(out, "model", overwrite=True)


def test_a_failing_writer_leaves_the_old_folder_and_no_staging(tmp_path):
    out = tmp_path / "m"
    _write_version(out, "v1")
    with pytest.raises(RuntimeError):
        with io.replace_folder(out, "model", overwrite=True) as staging:
            (staging / "weights.txt").write_text("half")
            raise RuntimeError("disk full")
    assert _contents(out) == {"weights.txt": "v1", "config.txt": "v1"}
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


class Crash(BaseException):
    """Stands for SIGKILL: nothing after it runs (it is not an Exception, so no handler catches it)."""


@pytest.mark.parametrize("step", range(4))
def test_a_crash_at_any_step_of_a_replace_leaves_the_old_or_the_new_copy(tmp_path, monkeypatch, step):
    """The steps of commit_folder: rename old -> backup, rename staging -> final, remove the backup; crash
    before step `step` (0: before the first rename), then the next start recovers."""
    out = tmp_path / "m"
    _write_version(out, "v1")
    calls = {"n": 0}
    real_replace, real_rmtree = os.replace, shutil.rmtree

    def counted(real):
        def wrapper(*args, **kwargs):
            if calls["n"] == step:
                raise Crash
            calls["n"] += 1
            return real(*args, **kwargs)
        return wrapper

    staging = io.stage_folder(out, "model", overwrite=True)
    monkeypatch.setattr(io.os, "replace", counted(real_replace))
    monkeypatch.setattr(io.shutil, "rmtree", counted(real_rmtree))
    (staging / "weights.txt").write_text("v2")
    (staging / "config.txt").write_text("v2")
    try:
        io.commit_folder(staging, out)
    except Crash:
        pass
    monkeypatch.undo()
    assert out.is_dir() or io.backup_name(out).is_dir()  # at every moment one whole copy is on disk
    io.recover(out)  # what the next start does
    assert _contents(out) in ({"weights.txt": "v1", "config.txt": "v1"}, {"weights.txt": "v2", "config.txt": "v2"})
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_leftovers_are_removed_only_if_they_are_lmlabs(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    killed = io.stage_folder(run / "checkpoints" / "step-0000004", "training-checkpoint")
    (killed / "model.safetensors").write_bytes(b"half")
    (run / f".metrics.jsonl{io.TEMP_TAG}tmp-0123456789ab").write_text("half")
    lookalike = run / "checkpoints" / f".step-0000008{io.TEMP_TAG}new-abc"  # the name, not the marker
    lookalike.mkdir()
    (lookalike / "notes.txt").write_text("mine")
    removed = io.clean_leftovers(run)
    assert sorted(p.name for p in removed) == sorted([killed.name, f".metrics.jsonl{io.TEMP_TAG}tmp-0123456789ab"])
    assert (lookalike / "notes.txt").read_text() == "mine"


def test_an_orphaned_backup_is_restored(tmp_path):
    out = tmp_path / "m"
    _write_version(out, "v1")
    os.replace(out, io.backup_name(out))  # killed between the two renames
    io.clean_leftovers(tmp_path)
    assert _contents(out) == {"weights.txt": "v1", "config.txt": "v1"}


@pytest.mark.parametrize("removed_before_kill", [0, 1, 2])
def test_a_backup_removal_cut_short_keeps_its_marker_and_the_next_recover_finishes_it(tmp_path, monkeypatch,
                                                                                      removed_before_kill):
    out = tmp_path / "m"
    _write_version(out, "v1")
    _write_version(io.backup_name(out), "v0")  # the old copy (2 files and the marker), being removed
    unlink, calls = os.unlink, []

    def killed(path, *args, **kwargs):
        if len(calls) == removed_before_kill:
            raise KeyboardInterrupt("killed")
        calls.append(path)
        unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", killed)
    with pytest.raises(KeyboardInterrupt):
        io.recover(out)
    monkeypatch.setattr(os, "unlink", unlink)
    assert io.read_marker(io.backup_name(out)) is not None  # still recognisably lmlab's
    io.clean_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"] and _contents(out)["weights.txt"] == "v1"


def test_files_are_replaced_whole_and_json_has_no_nan(tmp_path):
    path = tmp_path / "metrics.json"
    io.write_json(path, {"loss": float("nan"), "norm": [1.5, float("inf")], "step": 3})
    assert json.loads(path.read_text(), parse_constant=pytest.fail) == {"loss": None, "norm": [1.5, None], "step": 3}
    with pytest.raises(RuntimeError):
        io.write_atomic(path, lambda tmp: (tmp.write_text("half"), (_ for _ in ()).throw(RuntimeError())))
    assert json.loads(path.read_text())["step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    assert io.json_line({"loss": float("-inf")}) == '{"loss": null}\n'


def test_quantize_never_replaces_a_users_folder(tmp_path, monkeypatch, capsys):
    """Issue 15, case 1 and `--out .`: refused with one line, before any work, the user's file kept."""
    model = make_tiny_checkpoint(tmp_path / "tiny")
    mydocs = tmp_path / "mydocs"
    mydocs.mkdir()
    (mydocs / "thesis.txt").write_text("x")
    assert main(["quantize", str(model), "--out", str(mydocs), "--overwrite", "--no-eval"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was not written by lmlab" in err[0] and "even with --overwrite" in err[0]
    assert (mydocs / "thesis.txt").read_text() == "x"
    monkeypatch.chdir(mydocs)
    assert main(["quantize", str(model), "--out", ".", "--overwrite", "--no-eval"]) == 1
    assert "is the current folder" in capsys.readouterr().err
    assert sorted(p.name for p in mydocs.iterdir()) == ["thesis.txt"]
    assert main(["quantize", str(model), "--out", str(model), "--overwrite", "--no-eval"]) == 1
    assert "is the model being quantized" in capsys.readouterr().err


def test_read_json_says_in_one_line_what_is_wrong(tmp_path):
    good = tmp_path / "run.json"
    good.write_text(json.dumps({"format": "lmlab.training-run", "identity": {"lr": 0.1}}), encoding="utf-8")
    assert io.read_json(good, "lmlab.training-run", "a run") == {"format": "lmlab.training-run", "identity": {"lr": 0.1}}
    cases = {"{not json": r"bad\.json: not valid JSON \(Expecting property name .* at line 1\)",
             "[1, 2]": r"bad\.json: expected a JSON object$",
             '{"format": "other"}': r"bad\.json: not a run$"}
    for text, message in cases.items():
        (tmp_path / "bad.json").write_text(text, encoding="utf-8")
        with pytest.raises(LmlabError, match=message):
            io.read_json(tmp_path / "bad.json", "lmlab.training-run", "a run")
    with pytest.raises(LmlabError, match=r"^cannot read .*missing\.json"):
        io.read_json(tmp_path / "missing.json")
