"""Runs killed with SIGKILL: a `--nproc 2` launcher takes its workers with it and the run resumes to the weights
of a run never stopped; a single process killed at 20 random moments (most inside checkpoint writes) resumes
every time and ends bit-identical, with no temporary folder left."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmlab.io import PAUSE_ENV, TEMP_TAG
from lmlab.training.pretrain import PretrainSettings, pretrain
from lmlab.training.run_folder import RUN_FILE
from lmlab.training.trainer import TrainConfig

TIMEOUT_S = 600
FORKSERVER = multiprocessing.get_context("forkserver")  # children start from a process that has imported lmlab,
FORKSERVER.set_forkserver_preload(["lmlab.training.pretrain"])  # in milliseconds and free of the test's threads


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


def leftovers(run: Path) -> list[Path]:
    return [p for p in run.rglob("*") if TEMP_TAG in p.name]


def lmlab_processes(marker: str) -> list[int]:
    """The pids of live processes whose command line holds `marker` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("State"))
            except (OSError, StopIteration):
                continue
            if marker in command and "zombie" not in state:
                found.append(int(entry.name))
    return found


def pretrain_argv(data: Path, out: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "lmlab.cli.main", "pretrain", "--data", str(data), "--out", str(out), "--steps",
            str(steps), "--batch-size", "4", "--warmup", "2", "--eval-every", "5", "--eval-batches", "1",
            "--no-progress"]


def test_killing_the_nproc_launcher_stops_its_workers_and_resume_reaches_the_same_weights(char_data, tmp_path):
    steps, out = 30, tmp_path / "ddp-run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen([*pretrain_argv(char_data.path, out, steps), "--nproc", "2"], cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not list((out / "checkpoints").glob("step-*/trainer_state.json")):  # mid-run: after a checkpoint
            assert launcher.poll() is None and time.monotonic() < deadline, "the run ended before it was killed"
            time.sleep(0.05)
        assert lmlab_processes(str(out)) and launcher.poll() is None
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        for _ in range(100):  # no lmlab process may outlive the launcher by 10 s
            survivors = lmlab_processes(str(out))
            if not survivors:
                break
            time.sleep(0.1)
        assert not survivors, f"workers still running 10 s after the launcher was killed: {survivors}"
    finally:
        for pid in lmlab_processes(str(out)):  # never leave a worker behind, whatever happened
            os.kill(pid, signal.SIGKILL)
    assert not (out / "model").exists() and list((out / "checkpoints").glob("step-*"))
    resumed = subprocess.run([*pretrain_argv(char_data.path, out, steps), "--nproc", "2", "--resume"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and f"trained to step {steps}" in resumed.stdout
    single = tmp_path / "single"
    pretrain(PretrainSettings(out=single, data=[char_data.path], progress=False,
                              train=TrainConfig(steps=steps, batch_size=4, warmup=2, eval_every=5, eval_batches=1,
                                                progress=False)))
    a, b = weights(single), weights(out)
    assert a.keys() == b.keys()
    for name in a:  # the tolerance of the DDP tests: two processes sum the gradient in another order than one
        assert torch.allclose(a[name], b[name], atol=1e-5), name


def _train(out: str, data: str, steps: int, pause: str | None, errors: str) -> None:
    """A child process: start or resume the run in `out`; a failure is written to `errors`."""
    if pause:
        os.environ[PAUSE_ENV] = pause
    torch.set_num_threads(1)
    try:
        pretrain(PretrainSettings(out=out, data=[data], progress=False, resume=(Path(out) / RUN_FILE).is_file(),
                                  train=TrainConfig(steps=steps, batch_size=4, warmup=2, eval_every=4, eval_batches=1,
                                                    checkpoint_every=1, progress=False)))
    except BaseException:
        Path(errors).write_text(traceback.format_exc())
        os._exit(1)
    os._exit(0)


def run_child(out: Path, data: Path, steps: int, pause: str | None = None, kill_after: float | None = None,
              kill_in_save: bool = False) -> int:
    """Run `_train` in a child; SIGKILL it after `kill_after` seconds, or as soon as it is writing a checkpoint
    (a staging folder exists). Its exit code (-9 if killed)."""
    errors = out.parent / f"{out.name}.errors"
    child = FORKSERVER.Process(target=_train, args=(str(out), str(data), steps, pause, str(errors)))
    before = set(leftovers(out))  # what an earlier kill left, which this child's start removes
    child.start()
    if kill_in_save:
        while child.exitcode is None and not set(leftovers(out / "checkpoints")) - before:
            child.join(0.002)
    else:
        child.join(kill_after if kill_after is not None else TIMEOUT_S)
    if child.exitcode is None:
        child.kill()
        child.join()
    assert not errors.exists(), errors.read_text()
    return child.exitcode


def test_a_run_killed_at_20_random_moments_resumes_every_time_to_the_same_weights(char_data, tmp_path):
    """Half the kills fall while the run writes a checkpoint, half at a random time of its life."""
    steps, pause = 12, "0.02"
    warm = FORKSERVER.Process(target=torch.get_num_threads)  # start the fork server before timing a run
    warm.start()
    warm.join()
    start = time.monotonic()
    assert run_child(tmp_path / "whole", char_data.path, steps, pause) == 0
    whole_s = time.monotonic() - start
    out, rng, inside_a_save = tmp_path / "killed", random.Random(15), 0
    for kill in range(20):  # the first 10 in the first checkpoint write after a start, the next 10 at random
        before = set(leftovers(out))
        code = run_child(out, char_data.path, steps, pause, kill_after=rng.uniform(0.05, 0.5) * whole_s,
                         kill_in_save=kill < 10)
        assert code in (0, -signal.SIGKILL)  # killed, or finished (then resumed as finished) - never an error
        inside_a_save += kill < 10 and bool(set(leftovers(out)) - before)
    assert inside_a_save >= 5  # a save spans many pauses: a kill seen inside one almost always stays inside
    assert run_child(out, char_data.path, steps) == 0
    a, b = weights(tmp_path / "whole"), weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert leftovers(out) == []
    assert len(list((out / "checkpoints").iterdir())) == 1
