"""`--nproc N`: run this same command in N processes on this machine, as `torchrun --standalone` does.

torchrun (`torch.distributed.run`) starts the processes, gives each its RANK,
LOCAL_RANK and WORLD_SIZE, and sets up a rendezvous on a free local port
through which they find each other; the training code then joins the
process group (gloo between CPU processes, NCCL between GPUs). `relaunch`
drives the same launcher (`torch.distributed.launcher.api.elastic_launch`) with
the command line minus `--nproc`, and, like torchrun, gives each process one
OpenMP thread unless OMP_NUM_THREADS says otherwise, since N processes share
the cores. When a process fails, the launcher stops the others; the rank that
failed has already said why, so the launcher adds no report of its own.

The workers do not outlive their launcher: each asks the kernel for SIGTERM
when its parent dies (Linux `prctl(PR_SET_PDEATHSIG)`), so a launcher killed
even by SIGKILL takes its workers with it, and SIGTERM, from the dying
launcher or sent to a live one (which forwards it), makes every rank stop
after its current step with a checkpoint, as Ctrl-C does for one process. The
launcher holds the run folder's lock (run_lock) while its workers train.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import uuid
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from lmlab.errors import LmlabError
from lmlab.training.run_lock import HOLDER_ENV, RunLock, is_lock_file, lock_run
from lmlab.training.run_folder import RUN_FILE

NPROC_OPTION = "--nproc"
LAUNCHER_ENV = "LMLAB_LAUNCHER_PID"  # the workers' parent, which they must not outlive
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def without_nproc(argv: list[str]) -> list[str]:
    """`argv` with `--nproc N` / `--nproc=N` removed."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == NPROC_OPTION:
            skip = True
        elif not arg.startswith(NPROC_OPTION + "="):
            out.append(arg)
    return out


def check_nproc(nproc: int) -> None:
    if nproc < 1:
        raise LmlabError(f"--nproc must be at least 1, not {nproc}")
    if "WORLD_SIZE" in os.environ:
        raise LmlabError("--nproc starts the processes itself; under torchrun, leave it out")
    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise LmlabError(f"--nproc {nproc}: this machine has {torch.cuda.device_count()} GPU(s), one per process")


def relaunch(nproc: int, argv: list[str] | None = None, run_folder: str | Path | None = None) -> int:
    """Run `python -m lmlab.cli.main ARGV` (default: this process's command line without --nproc) in `nproc`
    processes; return 0 if all succeed, else the first failure's exit code (128 + the signal if the
    launcher was stopped by one). `run_folder`: the training run the workers write, locked meanwhile."""
    check_nproc(nproc)
    if argv is None:
        if not any(a == NPROC_OPTION or a.startswith(NPROC_OPTION + "=") for a in sys.argv):
            raise LmlabError("--nproc restarts the lmlab command line in several processes; from Python, start your "
                             "script with torchrun --nproc_per_node N instead")
        argv = without_nproc(sys.argv[1:])
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ[LAUNCHER_ENV] = str(os.getpid())
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    elastic_log = logging.getLogger("torch.distributed.elastic")
    level = elastic_log.level
    elastic_log.setLevel(logging.CRITICAL)  # the failed rank prints the reason; no launcher report on top
    folder, lock = _lock_for_workers(run_folder)
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "lmlab.cli.main", *argv)
    except ChildFailedError as err:
        codes = [failure.exitcode for failure in err.failures.values()]
        return next((code for code in codes if code > 0), 1)
    except SignalException as err:  # the workers got the signal too and stopped with a checkpoint
        return 128 + int(err.sigval)
    finally:
        elastic_log.setLevel(level)
        os.environ.pop(HOLDER_ENV, None)
        if lock is not None:
            lock.release()
            _remove_if_only_locks(folder)
    return 0


def _lock_for_workers(run_folder: str | Path | None) -> tuple[Path | None, RunLock | None]:
    """Lock `run_folder` for the workers if it is new or a run folder (anything else: rank 0 will refuse it)."""
    if run_folder is None:
        return None, None
    folder = Path(run_folder)
    if folder.exists() and not (folder.is_dir() and (folder / RUN_FILE).is_file() or _only_locks(folder)):
        return None, None
    folder.mkdir(parents=True, exist_ok=True)
    lock = lock_run(folder)
    os.environ[HOLDER_ENV] = str(os.getpid())
    return folder, lock


def _only_locks(folder: Path) -> bool:
    return folder.is_dir() and all(is_lock_file(entry.name) for entry in folder.iterdir())


def _remove_if_only_locks(folder: Path) -> None:
    """Remove the folder the launcher made for a run that never started (it holds nothing but lock files)."""
    if _only_locks(folder):
        for entry in folder.iterdir():
            entry.unlink()
        folder.rmdir()


def follow_launcher() -> None:
    """In a worker of `relaunch` (or of torchrun): receive SIGTERM when the launcher dies, however it dies
    (Linux; the launcher is the worker's parent)."""
    if "LOCAL_RANK" not in os.environ or not sys.platform.startswith("linux"):
        return
    launcher = int(os.environ.get(LAUNCHER_ENV, os.getppid()))
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != launcher:  # it died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)
