"""What each rank holds and where a step's time goes, set beside the memory plan of the strategy.

Model states (ZeRO's term, Rajbhandari et al. 2020, section 3.1) are counted
on the tensors themselves, each storage once: the parameters registered in
the model now (unsharded ones while FSDP holds them gathered), the parameters
the optimizer updates (FSDP's and ZeRO's shards, DTensors counted by their
local part), their gradients, and the optimizer's states (for
ZeroRedundancyOptimizer, this rank's partition). They are counted after each
forward pass and before each optimizer step, and the largest count is kept:
ZeRO-2 holds its gathered parameters from the forward pass to the backward
pass, the others peak when the gradients are complete. Buffers of the block
being computed (a layer's gathered weights in ZeRO-3, its unsharded
gradients before the reduce-scatter) come and go between those moments; the
process's peak resident memory shows them, with the activations.

Communication: in a distributed run, one step (the third) runs under `torch.profiler`,
and the wall time during which a collective (gloo's or NCCL's all-reduce,
all-gather, reduce-scatter, broadcast) was running is set beside the step's. Collectives
run on their own threads (gloo) or streams (NCCL) and may overlap the
computation, so their time is what the network and the copies cost, not
necessarily what the step waited for.
"""

from __future__ import annotations

import os
import resource
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from lmlab.io import write_json
from lmlab.planning.memory import TrainingPlan
from lmlab.planning.units import format_bytes
from lmlab.training.distributed import DistEnv, gather_to_main
from lmlab.training.sharded_checkpoint import local_optimizer

PROFILED_STEP = 3
REPORT_FILE = "strategy.json"  # the report's figures, in the run folder
COLLECTIVE_PREFIXES = ("gloo:", "nccl:")


@dataclass
class HeldBytes:
    """Bytes of model states one rank holds at one moment."""

    parameters: int = 0
    gradients: int = 0
    optimizer_states: int = 0

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer_states


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _new_bytes(tensors: list[torch.Tensor], seen: set[tuple[str, int]]) -> int:
    """Bytes of the storages behind `tensors` not yet in `seen` (which is updated)."""
    total = 0
    for tensor in tensors:
        storage = _local(tensor).untyped_storage()
        key = (str(tensor.device), storage.data_ptr())
        if storage.nbytes() and key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


@torch.no_grad()
def held_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> HeldBytes:
    """Parameters, gradients and optimizer states this rank holds now (see the module docstring)."""
    seen: set[tuple[str, int]] = set()
    params = [*model.parameters(), *(p for group in optimizer.param_groups for p in group["params"])]
    states = [v for entry in local_optimizer(optimizer).state.values() for v in entry.values() if torch.is_tensor(v)]
    return HeldBytes(
        parameters=_new_bytes(params, seen),
        gradients=_new_bytes([p.grad for p in params if p.grad is not None], seen),
        optimizer_states=_new_bytes(states, seen),
    )


def peak_memory_bytes(device: torch.device) -> int:
    """This process's peak memory so far: the CUDA allocator's peak on a GPU, the resident-set peak on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


@dataclass
class CommunicationTime:
    """One profiled step: its wall time and the time of its collectives, by kind."""

    step_seconds: float = 0.0
    collective_seconds: float = 0.0
    calls: dict[str, int] = field(default_factory=dict)


class StepObserver:
    """Counts model states after each forward pass and before each optimizer step of the first steps (keeping
    the largest count), and profiles the collectives of one step, through hooks on the model and the optimizer."""

    def __init__(self, wrapped: nn.Module, optimizer: torch.optim.Optimizer, env: DistEnv,
                 profiled_step: int = PROFILED_STEP):
        self.wrapped, self.optimizer, self.env = wrapped, optimizer, env
        self.peak = HeldBytes()
        self.communication: CommunicationTime | None = None
        self._profiled_step = profiled_step
        self._steps = 0
        self._profiler: torch.profiler.profile | None = None
        self._started = 0.0
        self._handles = [
            wrapped.register_forward_pre_hook(self._before_forward),
            wrapped.register_forward_hook(self._after_forward),
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]

    def _count(self) -> None:
        if self._steps > self._profiled_step:  # model states are steady after the first steps: stop paying
            return
        held = held_bytes(self.wrapped, self.optimizer)
        if held.total > self.peak.total:
            self.peak = held

    def _before_forward(self, module: nn.Module, args: Any) -> None:
        if (self.env.distributed and self._steps + 1 == self._profiled_step and self._profiler is None
                and torch.is_grad_enabled()):
            os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # keep the profiler's start/stop lines off stderr
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.env.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._profiler = torch.profiler.profile(activities=activities)
            self._profiler.start()
            self._started = time.perf_counter()

    def _after_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        self._count()

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._count()

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._steps += 1
        if self._profiler is not None and self.communication is None:
            if self.env.device.type == "cuda":
                torch.cuda.synchronize(self.env.device)
            elapsed = time.perf_counter() - self._started
            self._profiler.stop()
            self.communication = _collectives(self._profiler, elapsed)

    def close(self) -> None:
        """Remove the hooks (and stop a profiler a stopped run left running)."""
        for handle in self._handles:
            handle.remove()
        if self._profiler is not None and self.communication is None:
            self._profiler.stop()

    def report(self, plan: TrainingPlan, strategy_name: str, save_to: Path | None = None) -> str:
        """Every rank's model states and peak memory beside the plan, and rank 0's communication time, as
        text on rank 0 ('' elsewhere), also written as JSON to `save_to`. Call on every rank."""
        rows = gather_to_main((self.peak, peak_memory_bytes(self.env.device)), self.env)
        if not self.env.is_main:
            return ""
        planned = plan.model_states_bytes + (plan.host.bytes if plan.host else 0.0)
        if save_to is not None:
            record = {"strategy": strategy_name, "n_params": plan.n_params, "planned_bytes": planned,
                      "ranks": [{**asdict(held), "total": held.total, "peak_memory": peak} for held, peak in rows],
                      "communication": asdict(self.communication) if self.communication else None}
            write_json(save_to, record)
        lines = [f"memory per rank ({strategy_name}, {plan.n_params:,.0f} parameters): model states counted on the tensors "
                 f"each rank holds, beside the plan ({_plan_formula(plan)} = {format_bytes(planned)})",
                 f"  {'rank':>4}  {'parameters':>11}  {'gradients':>11}  {'optimizer':>11}  {'total':>11}  "
                 f"{'/ planned':>9}  {'peak memory':>11}"]
        for rank, (held, peak) in enumerate(rows):
            lines.append(f"  {rank:>4}  {format_bytes(held.parameters):>11}  {format_bytes(held.gradients):>11}  "
                         f"{format_bytes(held.optimizer_states):>11}  {format_bytes(held.total):>11}  "
                         f"{held.total / planned:>9.3f}  {format_bytes(peak):>11}")
        trainable = sum(p.numel() for group in self.optimizer.param_groups for p in group["params"])
        if trainable < plan.n_params:
            lines.append(f"note: {trainable:,} of the {plan.n_params:,.0f} parameters train; the plan counts "
                         "gradients and AdamW states for all of them")
        comm = self.communication
        if self.env.distributed and comm is not None and comm.step_seconds > 0:
            calls = ", ".join(f"{name} x{n}" for name, n in sorted(comm.calls.items()))
            compute = max(comm.step_seconds - comm.collective_seconds, 0.0)
            lines.append(f"communication (rank 0, step {self._profiled_step} profiled): collectives "
                         f"{comm.collective_seconds * 1e3:.1f} ms of a {comm.step_seconds * 1e3:.1f} ms step "
                         f"({comm.collective_seconds / comm.step_seconds:.0%}; {calls or 'none'}); the rest, "
                         f"{compute * 1e3:.1f} ms, computes (collectives may overlap it)")
        return "\n".join(lines)


def _collectives(profiler: torch.profiler.profile, step_seconds: float) -> CommunicationTime:
    """The wall time during which at least one collective ran (the union of their intervals: gloo runs several
    at once on its threads), and how many of each kind ran."""
    calls: Counter[str] = Counter()
    intervals = []
    for event in profiler.events():
        if event.name.startswith(COLLECTIVE_PREFIXES) or event.name.startswith(("ncclDevKernel", "ncclKernel")):
            calls[event.name.split(":", 1)[-1]] += 1
            intervals.append((event.time_range.start, event.time_range.end))
    busy_us, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        busy_us += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return CommunicationTime(step_seconds, busy_us / 1e6, dict(calls))


def _plan_formula(plan: TrainingPlan) -> str:
    par = plan.parallelism
    stage = f"ZeRO-{par.zero}" if par.zero else "no sharding"
    offload = ", offload to CPU" if par.offload else ""
    return f"{stage} over {par.shards} of {par.gpus} ranks{offload}, {plan.bytes_per_param:g} B/param before sharding"
