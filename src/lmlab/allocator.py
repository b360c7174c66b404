"""How freed tensor memory goes back to the system, so that the resident memory a run shows is what its
tensors need.

PyTorch's CPU tensors are allocated with the C library's malloc, which on Linux is usually glibc's. glibc
serves a request of at least M_MMAP_THRESHOLD bytes with its own mmap, returned to the system by free; smaller
requests come from the heap, where freed memory is reused but stays resident. The threshold starts at
128 KiB and is *dynamic*: each time an mmapped block is freed, glibc raises the threshold to that block's size,
up to 32 MiB on 64-bit systems (mallopt(3), "M_MMAP_THRESHOLD"). A training step frees its activations
(megabytes each) right after the forward pass needs them, so after the first step they all come from the heap,
whose freed middle cannot be returned: fine-tuning SmolLM2-135M with LoRA held 11.4 GB resident for 7.1 GB of
tensors (benchmarks/bench_finetune_memory.py). Fixing the threshold (setting it stops the dynamic rise) keeps
large tensors on mmap, and the resident peak falls to within a few percent of the tensors' (7.6 GB). In that
measurement a training step took the same CPU time either way: a step's arithmetic dwarfs the page faults.

Elsewhere than glibc, or when the user has set MALLOC_MMAP_THRESHOLD_ in the environment (glibc's own
tunable, which wins), these functions do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024  # glibc's starting threshold: blocks this large and larger get their own mmap


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def return_freed_memory_promptly() -> bool:
    """Fix glibc's mmap threshold at 128 KiB (and the heap's trim threshold with it), so every tensor of that
    size or more goes back to the system when it is freed. True when the setting took effect."""
    libc = _glibc()
    if libc is None or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, MMAP_THRESHOLD))


def release_freed_memory() -> None:
    """Hand the heap memory freed so far back to the system (glibc's malloc_trim).

    Loading makes large temporary tensors (a dequantized GGUF matrix, float weights before quantizing)
    that glibc keeps in the process after they are freed; a low-bit model would otherwise stay several
    times its size in resident memory (benchmarks/bench_load_memory.py measures it).
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
