"""Run folders are owned: one writer at a time, and a dead writer's lock is taken over.

A run folder holds `.lmlab.lock`, locked with `flock(2)` by the process that
owns the run: the `--nproc` launcher, or the training process itself. Every
rank of a multi-process run also locks `.lmlab.rank-N.lock`, so a folder stays
owned while any of its workers lives, even if the launcher was killed. The
files say who holds them (pid, host, start time, command), so a second writer
is refused with one line naming the owner. The kernel drops a `flock` when its
process dies, however it dies (SIGKILL included), so a lock whose holder is
gone is free: it is taken over, with a note naming the previous owner. (The
same advisory locking guards a git repository's index and a package
manager's database.)
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from lmlab.errors import LmlabError

LOCK_FILE = ".lmlab.lock"
RANK_LOCK_GLOB = ".lmlab.rank-*.lock"
HOLDER_ENV = "LMLAB_RUN_LOCK_HOLDER"  # set by the --nproc launcher for its workers: the pid that holds the lock


def rank_lock_file(rank: int) -> str:
    return f".lmlab.rank-{rank}.lock"


def is_lock_file(name: str) -> bool:
    return name == LOCK_FILE or (name.startswith(".lmlab.rank-") and name.endswith(".lock"))


@dataclass
class RunLock:
    """The locks this process holds on a run folder; `release` (or the process's end) frees them."""

    files: list[TextIO] = field(default_factory=list)

    def release(self) -> None:
        """Empty the lock files (a clean end leaves no owner to take over from) and unlock them."""
        for file in self.files:
            file.truncate(0)
            file.close()  # closing the file drops its flock
        self.files.clear()

    def __del__(self) -> None:
        self.release()


def _owner_text(path: Path, text: str | None = None) -> str:
    """Who holds the lock file `path` (or who wrote `text`, its earlier content)."""
    try:
        owner = json.loads(path.read_text(encoding="utf-8") if text is None else text)
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner["started"]))
        return f"pid {owner['pid']} on {owner['host']}, since {started}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _take(path: Path) -> tuple[TextIO, str | None] | None:
    """Lock `path` (created if missing) and write this process into it; None if another process holds it.
    Returns the open file and the previous holder's description if it left the file behind."""
    file = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.close()
        return None
    file.seek(0)
    previous = file.read().strip()
    file.seek(0)
    file.truncate()
    file.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                           "command": " ".join(sys.argv)[:500]}) + "\n")
    file.flush()
    return file, (_owner_text(path, previous) if previous else None)


def _is_held(path: Path) -> bool:
    """True if some process holds the flock on `path`."""
    try:
        file = open(path, encoding="utf-8")
    except OSError:
        return False
    with file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(file, fcntl.LOCK_UN)
        return False


def _refuse(folder: Path, path: Path) -> LmlabError:
    return LmlabError(f"{folder} is in use by another lmlab run ({_owner_text(path)}); wait for it to end or stop "
                      "it, then try again")


def lock_run(folder: str | Path, rank: int | None = None, say=print) -> RunLock:
    """Take the ownership of the run folder `folder` (which must exist) for this process.

    `rank` None: the owner's lock, unless this process's --nproc launcher holds it already (then its
    holder is checked). A rank number: that worker's lock. Refused (LmlabError) while another process
    holds the owner's lock or any worker's lock."""
    folder = Path(folder)
    lock = RunLock()
    if rank is not None:
        path = folder / rank_lock_file(rank)
        taken = _take(path)
        if taken is None:
            raise _refuse(folder, path)
        lock.files.append(taken[0])
        return lock
    owner = folder / LOCK_FILE
    launcher = os.environ.get(HOLDER_ENV)
    if launcher is not None:
        try:
            holder = json.loads(owner.read_text(encoding="utf-8"))["pid"]
        except (OSError, ValueError, KeyError, TypeError):
            holder = None
        if str(holder) != launcher or not _is_held(owner):
            raise _refuse(folder, owner)
        return lock
    taken = _take(owner)
    if taken is None:
        raise _refuse(folder, owner)
    lock.files.append(taken[0])
    busy = next((path for path in sorted(folder.glob(RANK_LOCK_GLOB)) if _is_held(path)), None)
    if busy is not None:
        lock.release()
        raise _refuse(folder, busy)
    if taken[1] is not None:
        say(f"note: took over the lock of {folder} from {taken[1]}, which is no longer running")
    return lock
