"""Sharded checkpoints: every rank writes the shards it holds, any number of ranks reads them back.

With ZeRO the training state exists nowhere whole: each rank holds a shard of
the optimizer states (and, from stage 2 or 3, of the gradients and weights).
Gathering it on one rank to save it would need the memory sharding avoided,
so each rank writes its own shards with `torch.distributed.checkpoint` (DCP):
one file per rank plus a `.metadata` file that records which slice of which
tensor every file holds, under the tensor's name in the model
(`decoder.layers.0.attn.q_proj.weight`, and `state.<name>.exp_avg` for an
AdamW moment, from `torch.distributed.checkpoint.state_dict`). On loading,
each rank asks for the slices its own layout needs, so a checkpoint written
by 4 ranks resumes on 2, or on one process, or under another ZeRO stage
(the "resharding" of DCP's planner).

A sharded checkpoint folder holds `shards/` (DCP), the model config
(`lmlab.json`) and the tokenizer, next to the trainer's own files (step,
random states). :func:`consolidate` reads all shards in one process and writes
an ordinary lmlab checkpoint (and a Hugging Face folder) that every lmlab
command loads.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.optim import ZeroRedundancyOptimizer

from lmlab.config import ModelConfig
from lmlab.errors import LmlabError
from lmlab.hub.checkpoint import LMLAB_CONFIG, build_model, export_hf, save_checkpoint
from lmlab.io import commit_folder, stage_folder, staging_name
from lmlab.models import Transformer
from lmlab.tokenizers import load_tokenizer
from lmlab.tokenizers.base import TokenizerProtocol
from lmlab.training.distributed import DistEnv

SHARDS = "shards"
CHECKPOINT_KIND = "training-checkpoint"  # the kind of folder lmlab.io marks (the trainer's own checkpoints)
OPTIMIZER_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)  # one entry per parameter name


def is_sharded(folder: Path) -> bool:
    """True if `folder` is a checkpoint written by :func:`save_sharded`."""
    return (Path(folder) / SHARDS / ".metadata").is_file()


def local_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer that holds this rank's states (ZeroRedundancyOptimizer keeps its partition in `.optim`)."""
    return optimizer.optim if isinstance(optimizer, ZeroRedundancyOptimizer) else optimizer


def _training_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Weights and optimizer states keyed by parameter name, as this rank holds them (DTensor shards or whole)."""
    return {"model": get_model_state_dict(model),
            "optimizer": get_optimizer_state_dict(model, local_optimizer(optimizer), options=OPTIMIZER_OPTIONS)}


def save_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, env: DistEnv,
                 tokenizer: TokenizerProtocol | None = None, write_main: Callable[[Path], None] | None = None) -> None:
    """Write `folder` on every rank: its shards of weights and optimizer states; rank 0 adds the config,
    the tokenizer and whatever `write_main(temporary folder)` writes.

    The folder is assembled in a staging folder (lmlab.io) and swapped in when
    every rank has finished, so an interrupted save never leaves a partial checkpoint.
    """
    folder = Path(folder)
    tmp = staging_name(folder, SHARDS)  # every rank names the same staging folder
    if env.is_main:
        stage_folder(folder, CHECKPOINT_KIND, overwrite=True, token=SHARDS)
        model_config = getattr(model, "config", None)
        if model_config is not None:
            model_config.save(tmp / LMLAB_CONFIG)
        if tokenizer is not None:
            tokenizer.save(tmp)
    dcp.save(_training_state(model, optimizer), checkpoint_id=tmp / SHARDS)
    if env.is_main:
        if write_main is not None:
            write_main(tmp)
        commit_folder(tmp, folder)
    if env.distributed:
        dist.barrier()


def load_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Fill `model` and `optimizer` (already laid out for this run) with the slices of a sharded checkpoint."""
    state = _training_state(model, optimizer)
    try:
        dcp.load(state, checkpoint_id=Path(folder) / SHARDS)
    except (CheckpointException, RuntimeError, ValueError, KeyError) as err:  # DCP gathers every rank's failure
        raise LmlabError(f"{folder}: the sharded checkpoint does not fit this model and optimizer "
                         f"({str(err).splitlines()[0][:200]})") from None
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, local_optimizer(optimizer), state["optimizer"], options=OPTIMIZER_OPTIONS)


def consolidate(checkpoint: Path, out: Path, hf_out: Path | None = None, overwrite: bool = False) -> Path:
    """Read every shard of a sharded checkpoint (or the latest one in a run folder) in this one process and
    write the whole model as an lmlab checkpoint at `out` (and a Hugging Face folder at `hf_out`)."""
    checkpoint = latest_sharded(Path(checkpoint))
    config = ModelConfig.load(checkpoint / LMLAB_CONFIG)
    with torch.device("meta"):
        skeleton = Transformer(config)
    state = {"model": {name: torch.empty(t.shape, dtype=t.dtype) for name, t in skeleton.state_dict().items()}}
    try:
        dcp.load(state, checkpoint_id=checkpoint / SHARDS, no_dist=True)
    except (CheckpointException, RuntimeError, ValueError, KeyError) as err:
        raise LmlabError(f"{checkpoint}: cannot read the shards as a {config.arch} with this config "
                         f"({str(err).splitlines()[0][:200]})") from None
    model = build_model(config, state["model"], str(checkpoint))
    tokenizer = _tokenizer(checkpoint)
    save_checkpoint(model, out, tokenizer, overwrite=overwrite)
    if hf_out is not None:
        export_hf(model, hf_out, tokenizer, overwrite=overwrite)
    return Path(out)


def latest_sharded(path: Path) -> Path:
    """`path` if it is a sharded checkpoint, else the last sharded checkpoint of the run folder `path`."""
    if is_sharded(path):
        return path
    found = sorted(p for p in (path / "checkpoints").glob("step-*") if is_sharded(p))
    if not found:
        raise LmlabError(f"{path} is neither a sharded checkpoint (no {SHARDS}/.metadata) nor a run folder with one")
    return found[-1]


def _tokenizer(folder: Path) -> Any:
    """The tokenizer saved in `folder`, or None."""
    try:
        return load_tokenizer(folder)
    except LmlabError:
        return None
