"""glibc's dynamic mmap threshold keeps freed activation-sized tensors resident; lmlab.allocator returns them."""

import os
import subprocess
import sys

import pytest

from lmlab.allocator import _glibc

PROGRAM = """
import sys
import torch
from lmlab.allocator import return_freed_memory_promptly

def rss():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmRSS:"))

if sys.argv[1] == "fixed":
    assert return_freed_memory_promptly()
big = torch.ones(16 << 20, dtype=torch.uint8)  # a large block freed, as a training step frees activations:
del big                                         # glibc then raises its mmap threshold to 16 MiB
kept, freed = [], []
for i in range(64):  # 4 MiB tensors, alternately kept and freed, the kept ones last
    (freed if i % 2 == 0 else kept).append(torch.ones(4 << 20, dtype=torch.uint8))
before = rss()
del freed
print(before - rss())
"""


def _returned(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    run = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, env=env, check=True)
    return int(run.stdout.split()[-1])


@pytest.mark.skipif(_glibc() is None or not os.path.exists("/proc/self/status"), reason="glibc on Linux only")
def test_freed_tensors_go_back_to_the_system_only_with_the_threshold_fixed():
    freed = 32 * (4 << 20)
    assert _returned("dynamic") < 0.1 * freed  # glibc's default: the freed tensors stay in the heap
    assert _returned("fixed") > 0.9 * freed
