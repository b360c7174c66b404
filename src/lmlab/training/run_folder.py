"""A training run's folder: what it holds (run.json with the run's identity, metrics.jsonl, loss.png,
checkpoints/step-NNNNNNN/, model/, data/), and the rule for opening one: a new run needs an empty or missing
folder, a resumed one the folder of the same run; one writer at a time (run_lock)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError
from lmlab.io import MARKER, TEMP_TAG, clean_leftovers, read_json, read_marker, write_json, write_marker
from lmlab.training.checkpoint import STATE_FILE
from lmlab.training.run_lock import RunLock, is_lock_file, lock_run

RUN_FILE = "run.json"
RUN_FORMAT = "lmlab.training-run"
RUN_KIND = "training-run"  # the kind of output folder lmlab.io marks
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


@dataclass
class RunFolder:
    """An output folder: run.json, metrics.jsonl, loss.png, checkpoints/step-NNNNNNN/, model/ (and data/)."""

    path: Path
    identity: dict[str, Any]
    resume: bool = False
    lock: RunLock | None = None  # this process's ownership of the folder (run_lock)

    def release(self) -> None:
        """Give up the folder's lock (the end of the process does it too)."""
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "lock": None}  # sent to the other ranks; the lock stays with its process

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def data_dir(self) -> Path:
        return self.path / "data"

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def plot(self) -> Path:
        return self.path / PLOT_FILE

    def latest_checkpoint(self) -> Path | None:
        found = sorted(p for p in self.checkpoints.glob("step-*") if (p / STATE_FILE).is_file())
        return found[-1] if found else None

    def read_metrics(self) -> list[dict[str, Any]]:
        """The step records of metrics.jsonl (none if there is no file yet), skipping the last line of a process
        killed while writing it."""
        history: list[dict[str, Any]] = []
        if self.metrics.is_file():
            for line in self.metrics.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    history.append(json.loads(line))
        return history


def open_run(out: str | Path, identity: dict[str, Any], resume: bool = False) -> RunFolder:
    """Check that `out` may hold this run, take its lock, then write its run.json (call on one process only).

    A new run needs an empty or missing folder. `resume` needs the folder of
    the same run: same identity (model, data, optimization settings; the
    number of steps may change). Anything else is refused, and nothing is
    written. While the run lives, a second writer is refused (run_lock).
    """
    out = Path(out)
    _check_run_folder(out, identity, resume)  # before creating the folder or a lock file in it
    out.mkdir(parents=True, exist_ok=True)
    lock = lock_run(out, say=lambda text: print(text, flush=True))
    try:
        occupied = _check_run_folder(out, identity, resume)  # again: the folder may have changed meanwhile
        if (read_marker(out) or {}).get("kind") != RUN_KIND:  # a new run, or one from before lmlab marked folders
            write_marker(out, RUN_KIND)
        removed = clean_leftovers(out)
        if removed:
            print(f"note: removed {len(removed)} temporary file(s) or folder(s) an interrupted save left in {out}",
                  flush=True)
        if not occupied:
            write_json(out / RUN_FILE, {"format": RUN_FORMAT, "identity": identity})
    except BaseException:
        lock.release()
        raise
    return RunFolder(out, identity, resume=occupied, lock=lock)


def _check_run_folder(out: Path, identity: dict[str, Any], resume: bool) -> bool:
    """Raise LmlabError unless `out` may hold this run; True if it holds it already (resume)."""
    if out.exists() and not out.is_dir():
        raise LmlabError(f"{out} exists and is not a folder")
    run_file = out / RUN_FILE
    occupied = out.is_dir() and any(entry.name != MARKER and not is_lock_file(entry.name) and TEMP_TAG not in entry.name
                                    for entry in out.iterdir())  # lmlab's own files of a run that never started
    if occupied and not run_file.is_file():
        marker = read_marker(out)
        what = f"it holds an lmlab {marker['kind']}" if marker else "it was not written by lmlab"
        raise LmlabError(f"{out} is not empty and holds no lmlab training run ({what}); choose another output "
                         "folder")
    if occupied and not resume:
        raise LmlabError(f"{out} already holds a training run; pass --resume to continue it, or choose another "
                         "output folder")
    if resume and not occupied:
        raise LmlabError(f"nothing to resume: {out} holds no training run")
    if occupied:
        old = read_json(run_file, RUN_FORMAT, "an lmlab training run").get("identity", {})
        current = json.loads(json.dumps(identity))  # compare as JSON would store it
        if old != current:
            changed = sorted(k for k in old.keys() | current.keys() if old.get(k) != current.get(k))
            raise LmlabError(f"{out} holds a different training run (it differs in: {', '.join(changed)}); "
                             "choose another output folder")
    return occupied
