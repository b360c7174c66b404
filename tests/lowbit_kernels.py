"""What the low-bit layers' tests share: the bf16 rounding step and a spy on PyTorch's kernels."""

from __future__ import annotations

import pytest
import torch

BF16_EPS = 2.0 ** -8  # bf16 keeps 8 significant bits: rounding moves a number by at most 2^-9 of it


def spy_kernel(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """A list that grows by one at each call of torch.ops.aten.<name> (which still runs). Layers made after
    this call use PyTorch's kernels even where lmlab's run (LMLAB_KERNELS=torch; tests/kernels test those)."""
    monkeypatch.setenv("LMLAB_KERNELS", "torch")
    calls, kernel = [], getattr(torch.ops.aten, name)
    monkeypatch.setattr(torch.ops.aten, name, lambda *args: calls.append(1) or kernel(*args))
    return calls
