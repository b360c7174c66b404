"""Refuse, before any work, what would need more memory than this machine has.

A run that asks for 10^12 steps, a batch of a billion or a 175B-parameter
model does not fail gracefully: the allocation is refused deep inside numpy or
torch (a traceback), or the kernel's out-of-memory killer ends the process, or
the machine swaps for hours. The planners (`lmlab.planning.memory`) know the
bytes in advance; `check_fits` sets them beside the memory the kernel says can
still be given to a process without swapping (MemAvailable in /proc/meminfo,
Linux 3.14+, which counts free memory and the page cache it can drop) and
refuses with the estimate.
"""

from __future__ import annotations

import os
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.planning.units import format_bytes

MEMINFO = Path("/proc/meminfo")


def available_memory_bytes() -> int | None:
    """Memory a new allocation can take without swapping: MemAvailable, else free physical pages; None if unknown."""
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(what: str, n_bytes: float, advice: str = "") -> None:
    """Raise LmlabError when `what` needs more than the memory available now, naming the estimate."""
    available = available_memory_bytes()
    if available is not None and n_bytes > available:
        raise LmlabError(f"{what} needs about {format_bytes(n_bytes)} of memory, more than the "
                         f"{format_bytes(available)} this machine has available" + (f": {advice}" if advice else ""))
