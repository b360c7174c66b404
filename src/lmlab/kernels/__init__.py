"""lmlab's own CPU kernels for the low-bit products of decoding, compiled once on first use.

The idea is llama.cpp's: quantize the activation row too, per block of 32 inputs, to integer codes with one
fp32 scale per block, and multiply integer codes by integer codes with Intel's VNNI instructions (AVX-512
VNNI), applying the scales in fp32 once per block.

- int4 (lmlab.quantization.int4: ŵ = (q − 8)·s + z per group g of G inputs, G a multiple of 32). The
  activations become int8, d_b = max|x| / 127 per block (llama.cpp's Q8_0), and `vpdpbusd` multiplies
  64 unsigned bytes (the codes) by 64 signed ones (the activations), summed four by four into 16 int32
  lanes, in one instruction. With x_k ≈ d_b·x̂_k, P_jb = Σ_{k∈b} q_jk·x̂_k and S_b = Σ_{k∈b} x̂_k (integers),

      y_j = Σ_g [ s_jg · Σ_{b∈g} d_b·(P_jb − 8·S_b) + z_jg · Σ_{b∈g} d_b·S_b ].

  The codes 0..15 are vpdpbusd's unsigned operand as they are. They are repacked once, at load, so that
  one 64-byte load feeds two vpdpbusd for 16 rows: rows interleaved by 16, each lane holding one row's
  codes for 4 consecutive inputs (low nibbles) and the next 4 (high nibbles); the bf16 scales and
  offsets of the 16 rows are stored next to each other per group (`int4_layout`).
- int8, one scale s_j per row (lmlab.quantization.quantized_linear, absmax per channel): the codes stay
  in their row-major matrix (no copy; the int4 models' tied embedding and LM head read the same table).
  The activations become int16, d_b = max|x| / 32767 per block, and `vpdpwssd` multiplies 32 int16 pairs
  (the weights widened from int8) into 16 int32 lanes: y_j = s_j · Σ_b d_b · Σ_{k∈b} w_jk·x̂_k. int8
  activations here raised int8 SmolLM2's perplexity on the shipped dialogues by 1.01% over fp32 (the
  issue's line: 1%), against 0.57% with PyTorch's kernel (bf16 activations); int16 ones round 256x finer.

Rounding the activations per block moves each x_k by at most d_b / 2 = max_{k∈b}|x_k| / (2·qmax): the
product differs from x·Ŵᵀ by at most Σ_b (d_b / 2)·Σ_{k∈b}|ŵ_jk| (plus fp32 rounding); the tests check that
bound. bf16 outputs are rounded once at the end.

`native()` returns the compiled module, or None when PyTorch's kernels must be used: `LMLAB_KERNELS=torch`
in the environment, a CPU without AVX-512 (F, BW) and VNNI, no C++ compiler, or a failed build (one note
line on stderr says which, once). The build (torch.utils.cpp_extension, ~1 minute) runs once per source
and torch version and is kept in ~/.cache/lmlab/kernels (or $XDG_CACHE_HOME/lmlab/kernels).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import torch

SOURCE = Path(__file__).with_name("lowbit.cpp")
CPU_FLAGS = ("avx512f", "avx512bw", "avx512_vnni")
COMPILE_FLAGS = ["-O3", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512vnni"]
ENVIRONMENT = "LMLAB_KERNELS"  # "torch": use PyTorch's kernels even where lmlab's run


def native() -> ModuleType | None:
    """lmlab's compiled kernels (`int4_mm`, `int8_mm`), or None if PyTorch's kernels are to be used."""
    if os.environ.get(ENVIRONMENT, "").lower() == "torch":
        return None
    return compiled()


def missing_cpu_flags() -> list[str]:
    """The instruction sets the kernels need that this CPU lacks (all of them if it cannot be told)."""
    try:
        with open("/proc/cpuinfo") as f:
            present = set(next(line for line in f if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return list(CPU_FLAGS)
    return [flag for flag in CPU_FLAGS if flag not in present]


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(COMPILE_FLAGS).encode()
                         + torch.__version__.encode() + sys.version.encode()).hexdigest()[:16]
    return base / "lmlab" / "kernels" / key


def _note(reason: str) -> None:
    print(f"lmlab: note: {reason}; using PyTorch's low-bit kernels", file=sys.stderr)


@functools.cache
def compiled() -> ModuleType | None:
    """The compiled kernels whatever LMLAB_KERNELS says (built or loaded once per process), or None."""
    missing = missing_cpu_flags()
    if missing:
        _note(f"this CPU lacks {', '.join(missing)} for lmlab's kernels")
        return None
    folder = cache_dir()
    name = f"lmlab_lowbit_{folder.name}"
    library = folder / f"{name}.so"  # the name torch.utils.cpp_extension gives it
    if not library.exists():
        if shutil.which(os.environ.get("CXX", "c++")) is None:
            _note("no C++ compiler to build lmlab's kernels")
            return None
        print("lmlab: compiling lmlab's CPU kernels (once) ...", file=sys.stderr, flush=True)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            from torch.utils.cpp_extension import load

            return load(name=name, sources=[str(SOURCE)], extra_cflags=COMPILE_FLAGS,
                        extra_ldflags=["-fopenmp"], build_directory=str(folder),
                        verbose=False)
        except Exception as error:  # noqa: BLE001 - any build failure means: use torch's kernels
            _note(f"lmlab's kernels did not build ({type(error).__name__}: {str(error).splitlines()[0][:120]})")
            return None
    spec = importlib.util.spec_from_file_location(name, library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def int4_layout(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes uint8 [N, K] (0..15) and per-group scales and offsets [N, K / G] -> the kernel's operands:
    codes [N / 16, K / 8, 64] (byte 4r + i of chunk c: row r's input 8c + i, low nibble, and 8c + 4 + i,
    high nibble) and bf16 [N / 16, K / G, 2, 16] (16 scales, then 16 offsets)."""
    rows, columns = q.shape
    chunks = q.to(torch.uint8).reshape(rows // 16, 16, columns // 8, 2, 4)
    packed = (chunks[:, :, :, 0] | (chunks[:, :, :, 1] << 4)).permute(0, 2, 1, 3).contiguous()
    scales = torch.stack([scale, offset], dim=-1).to(torch.bfloat16).reshape(rows // 16, 16, -1, 2)
    return packed.reshape(rows // 16, columns // 8, 64), scales.permute(0, 2, 3, 1).contiguous()


def int4_codes(packed: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inverse of int4_layout: (codes uint8 [N, K], scales bf16 [N, K / G], offsets bf16 [N, K / G])."""
    blocks, chunks, _ = packed.shape
    nibbles = packed.reshape(blocks, chunks, 16, 4).permute(0, 2, 1, 3)
    codes = torch.stack([nibbles & 15, nibbles >> 4], dim=3).reshape(blocks * 16, chunks * 8)
    per_row = scales.permute(0, 3, 1, 2).reshape(blocks * 16, -1, 2)
    return codes, per_row[..., 0], per_row[..., 1]
