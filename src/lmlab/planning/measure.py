"""Measure the memory of a real training step on CPU, part by part, to set beside the plan.

The plan (:mod:`lmlab.planning.memory`) adds up weights, gradients, optimizer
states (ZeRO's accounting, Rajbhandari et al. 2020) and the activations saved
for the backward pass (Korthikanti et al. 2022). Here each part is counted on
the tensors a step really holds, every storage once (views and tied weights
share a storage):

- weights: the model's parameters; gradients: their `.grad` after backward;
  optimizer states: the tensors in `optimizer.state` after its first step;
- activations: every tensor autograd saves for the backward pass, caught as it
  is saved with `torch.autograd.graph.saved_tensors_hooks`; parameters that
  layers save (to compute input gradients) are weights, not activations.

As a cross-check, the process's peak resident memory over the step (the
kernel's high-water mark VmHWM, reset through /proc/self/clear_refs) above
what it held before the model was built. It sees everything the accounting
leaves out: temporaries of the forward and backward kernels, the gradient of
the logits, the allocator's slack.

lmlab's attention calls `F.scaled_dot_product_attention`, which on CPU without
dropout runs a fused FlashAttention-style kernel (Dao et al. 2022) that saves
the output and the log-sum-exp of each row, never the s × s scores; with
dropout it falls back to the explicit computation. `plan_step` plans with the
matching setting.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmlab.config import ModelConfig
from lmlab.errors import LmlabError
from lmlab.planning.memory import TrainingPlan, plan_training_memory
from lmlab.planning.params import count_parameters
from lmlab.planning.units import require_positive

OPTIMIZERS = ("adamw", "adam", "sgd")
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _storage_bytes(tensors: list[torch.Tensor], seen: set[int]) -> int:
    """Bytes of the storages behind `tensors` not in `seen` (which is updated)."""
    total = 0
    for tensor in tensors:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def _status_kb(field: str) -> int | None:
    """A 'kB' line of /proc/self/status (VmRSS, VmHWM), or None where there is no /proc."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def saved_tensor_bytes(run: Callable[[], Any], exclude: Iterable[torch.Tensor] = ()) -> tuple[Any, int]:
    """What `run()` returns, and the bytes of the tensors autograd saves for the backward pass while `run()` executes (caught with
    `torch.autograd.graph.saved_tensors_hooks`), each storage once, leaving out those of `exclude` (parameters
    that layers save to compute input gradients are weights, not activations)."""
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    saved: list[torch.Tensor] = []

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.untyped_storage().data_ptr() not in excluded:
            saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        result = run()
    return result, _storage_bytes(saved, set())


class PeakMemory:
    """The peak memory a stretch of code uses above where it started.

    On a GPU, the CUDA allocator's peak of allocated bytes. On CPU, the
    process's resident-set high-water mark (VmHWM), reset at the start by
    writing 5 to /proc/self/clear_refs (Linux 4.0+), minus the resident set at
    the start. `peak_bytes` is None where neither is available.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return
        self.start = _status_kb("VmRSS")
        try:
            _CLEAR_REFS.write_text("5")
        except OSError:
            self.start = None

    def peak_bytes(self) -> int | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) - self.start
        peak = _status_kb("VmHWM")
        if self.start is None or peak is None:
            return None
        return (peak - self.start) * 1024


@dataclass(frozen=True)
class MeasuredStep:
    """Bytes one training step holds, part by part, and the process's peak above its start."""

    weights: int
    gradients: int
    optimizer_states: int
    activations: int
    peak_rss: int | None

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer_states + self.activations

    def parts(self) -> dict[str, int]:
        return {"weights": self.weights, "gradients": self.gradients, "optimizer states": self.optimizer_states,
                "activations": self.activations}


def make_optimizer(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW/Adam (momentum and variance per weight) or SGD with momentum (one buffer), at a harmless rate."""
    if name not in OPTIMIZERS:
        raise LmlabError(f"can measure the optimizers {', '.join(OPTIMIZERS)}, not {name!r}")
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    return (torch.optim.AdamW if name == "adamw" else torch.optim.Adam)(model.parameters(), lr=1e-4)


def _warm_up(config: ModelConfig, optimizer: str) -> None:
    """One step of a one-layer, narrow copy of the model on a few tokens, so the code and thread pools the first
    step loads once (they stay resident) are in place before the peak is measured."""
    from lmlab.models import Transformer

    small = config.replace(n_layer=1, vocab_size=min(config.vocab_size, 64))
    model = Transformer(small).train()
    tokens = torch.randint(0, small.vocab_size, (1, min(8, small.max_seq_len) + 1))
    F.cross_entropy(model(tokens[:, :-1]).logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
    make_optimizer(optimizer, model).step()


def measure_training_step(config: ModelConfig, batch: int, seq_len: int, optimizer: str = "adamw",
                          seed: int = 0) -> MeasuredStep:
    """Build a decoder from `config` in fp32 and train it two steps on random tokens; count what a step holds.

    The first step creates the optimizer states; the second is the one whose
    saved activations are counted (a steady-state step). The peak resident
    memory covers building the model and both steps, after a warm-up step of
    a small copy has loaded what any first step loads.
    """
    from lmlab.models import Transformer

    if config.arch != "decoder" or config.head != "lm":
        raise LmlabError("measuring a training step needs a decoder with an LM head (causal language modelling)")
    require_positive("batch size", batch)
    require_positive("sequence length", seq_len)
    if seq_len > config.max_seq_len:
        raise LmlabError(f"sequence length {seq_len} is beyond the model's context of {config.max_seq_len} tokens")
    _warm_up(config, optimizer)
    peak = PeakMemory("cpu")
    model = Transformer(config).init_weights(seed=seed).train()
    opt = make_optimizer(optimizer, model)
    tokens = torch.randint(0, config.vocab_size, (batch, seq_len + 1), generator=torch.Generator().manual_seed(seed))

    def forward() -> torch.Tensor:
        logits = model(tokens[:, :-1]).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())

    for step in range(2):
        loss, activations = saved_tensor_bytes(forward, model.parameters())
        loss.backward()
        if step == 0:
            opt.step()
            opt.zero_grad(set_to_none=True)
    params = list(model.parameters())
    weights = _storage_bytes(params, set())
    gradients = _storage_bytes([p.grad for p in params if p.grad is not None], set())
    states = _storage_bytes([t for state in opt.state.values() for t in state.values() if torch.is_tensor(t)], set())
    return MeasuredStep(weights, gradients, states, activations, peak.peak_bytes())


def uses_fused_attention(config: ModelConfig) -> bool:
    """True if training runs attention through the fused kernel that keeps no s × s scores (no dropout)."""
    return config.dropout == 0


def plan_step(config: ModelConfig, batch: int, seq_len: int, optimizer: str = "adamw") -> TrainingPlan:
    """The planner's fp32 estimate for the step `measure_training_step` runs."""
    return plan_training_memory(count_parameters(config), "fp32", optimizer, config=config, batch=batch,
                                seq_len=seq_len, flash_attention=uses_fused_attention(config))

