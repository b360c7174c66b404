"""Processes and strategies: one process, or data parallelism over many under `torchrun`.

Distributed data parallelism (DDP; Li et al. 2020, "PyTorch Distributed:
Experiences on Accelerating Data Parallel Training") keeps a full copy of the
model in every process, gives each process a different slice of the batch,
and averages the gradients with an all-reduce during the backward pass, so
every copy takes the same optimizer step. `torchrun --nproc_per_node N`
starts the N processes and tells each its RANK, LOCAL_RANK and WORLD_SIZE
through environment variables; the backend is NCCL between GPUs and gloo
between CPU processes.

A `Strategy` is where the layout of the training state lives: how the model is
wrapped, how gradients are synchronised, clipped and collected for a
checkpoint. `Strategy` (one process) and `DataParallel` (DDP) are here; the
sharded strategies (ZeRO stages 1-3: Rajbhandari et al. 2020, on FSDP) are in
:mod:`lmlab.training.fsdp` and implement the same methods, sharding
parameters, gradients and optimizer states over the ranks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lmlab.errors import LmlabError
from lmlab.training.optim import make_optimizer

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: its rank among world_size processes, and its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 prints, writes files and checkpoints; the other ranks only compute."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def backend_for(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed(timeout_s: float = 600.0) -> DistEnv:
    """Join the process group torchrun set up (WORLD_SIZE > 1), or describe a single process.

    Each process takes GPU LOCAL_RANK when GPUs are present, else the CPU.
    """
    from lmlab.training.launch import follow_launcher

    follow_launcher()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend_for(device), timeout=timedelta(seconds=timeout_s))
    return DistEnv(rank, local_rank, world_size, device)


def shutdown(env: DistEnv) -> None:
    """Leave the process group (if this process joined one)."""
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum `tensor` over all ranks, in place; a no-op for one process. (NCCL reduces GPU tensors only,
    so the sum travels through this rank's device.)"""
    if env.distributed:
        on_device = tensor.to(env.device)
        dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
        if on_device is not tensor:
            tensor.copy_(on_device)
    return tensor


def gather_to_main(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's `obj`, in rank order, on rank 0 (an empty list elsewhere)."""
    if not env.distributed:
        return [obj]
    gathered: list[Any] = [None] * env.world_size if env.is_main else []
    dist.gather_object(obj, gathered if env.is_main else None, dst=0)
    return gathered


def run_on_main(fn: Callable[[], T], env: DistEnv) -> T:
    """Run `fn` on rank 0 only and hand its result to every rank.

    For work that touches the disk (checking and writing the output folder,
    preparing data): a user error raised on rank 0 is raised on every rank,
    so no rank is left waiting for the others.
    """
    if not env.distributed:
        return fn()
    message: list[Any] = [None]
    if env.is_main:
        try:
            message = [("ok", fn())]
        except LmlabError as err:
            message = [("error", str(err))]
    dist.broadcast_object_list(message, src=0)
    status, value = message[0]
    if status == "error":
        raise LmlabError(value)
    return value


class Strategy:
    """How one model's training state is laid out over the processes (here: not at all, one process)."""

    name = "single"
    sharded = False  # True when ranks hold different parts of the state: checkpoints are then written by every rank

    def __init__(self, env: DistEnv):
        self.env = env

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the training loop calls forward/backward on."""
        return model.to(self.env.device)

    def unwrap(self, wrapped: nn.Module) -> nn.Module:
        """The plain model inside the wrapper (whose state_dict is the full set of weights)."""
        return wrapped

    def no_sync(self, wrapped: nn.Module) -> contextlib.AbstractContextManager:
        """Context for the backward passes of a step's micro-batches but the last: no gradient exchange."""
        return contextlib.nullcontext()

    def clip_grad_norm(self, wrapped: nn.Module, max_norm: float) -> torch.Tensor:
        """Scale the gradients so their global L2 norm is at most `max_norm`; return the norm before."""
        return torch.nn.utils.clip_grad_norm_(wrapped.parameters(), max_norm)

    def optimizer_state(self, wrapped: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The full optimizer state (rank 0's copy: with replication every rank holds the same)."""
        return optimizer.state_dict()

    def load_optimizer_state(self, wrapped: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)

    def make_optimizer(self, wrapped: nn.Module, lr: float, weight_decay: float,
                       betas: tuple[float, float]) -> torch.optim.Optimizer:
        """AdamW over the wrapped model's parameters (see `lmlab.training.optim.make_optimizer`)."""
        return make_optimizer(wrapped, lr, weight_decay, betas)

    def whole_model(self, model: nn.Module) -> nn.Module | None:
        """The trained `model` (the module given to `wrap`) with all its weights, on rank 0 at least; call on every
        rank: sharded strategies gather the weights. Replicating strategies train `model` itself."""
        return model


class DataParallel(Strategy):
    """DDP: a full replica per process, gradients averaged across ranks during the backward pass."""

    name = "ddp"

    def wrap(self, model: nn.Module) -> nn.Module:
        model = model.to(self.env.device)
        device_ids = [self.env.device.index] if self.env.device.type == "cuda" else None
        # gradients as views of the all-reduce buckets: one copy of them, not two
        return DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True)

    def unwrap(self, wrapped: nn.Module) -> nn.Module:
        return wrapped.module

    def no_sync(self, wrapped: nn.Module) -> contextlib.AbstractContextManager:
        return wrapped.no_sync()


STRATEGIES: dict[str, type[Strategy]] = {"single": Strategy, "ddp": DataParallel}


def make_strategy(env: DistEnv, name: str | None = None) -> Strategy:
    """The named strategy, or the natural one: DDP when several processes run, else a single process."""
    name = name or ("ddp" if env.distributed else "single")
    if name not in STRATEGIES:
        raise LmlabError(f"unknown training strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    if name == "single" and env.distributed:
        raise LmlabError(f"{env.world_size} processes are running: the 'single' strategy needs exactly one")
    return STRATEGIES[name](env)


@contextlib.contextmanager
def process_group() -> Iterator[DistEnv]:
    """`init_distributed` on entry, `shutdown` on exit."""
    env = init_distributed()
    try:
        yield env
    finally:
        shutdown(env)
