"""A PPO checkpoint: what a stopped `lmlab align --method ppo` run needs to continue as if it never stopped.

checkpoints/step-NNNNNNN/ (the trainer's layout, `lmlab.training.run_folder`) holds the tensors PPO trains
(the LoRA adapters and the value head: trainable.safetensors), the AdamW moments (optimizer.safetensors, one
tensor per parameter index and state, as `lmlab.training.checkpoint` writes them), the random states (the
generator that orders prompts and mini-batches, the prompts it has queued, torch's global generator:
rng.safetensors), and trainer_state.json: the step, the KL coefficient, the history so far, the time trained
and the optimizer's parameter groups. The folder is written under a temporary name and renamed into place
(`lmlab.io.replace_folder`), trainer_state.json last, so a folder holding it is a whole checkpoint. Rollouts
are sampled with seeds derived from the step, so a resumed run on CPU repeats, bit for bit, the steps an
uninterrupted one takes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmlab.io import read_safetensors, remove_folder, replace_folder, save_safetensors, write_json
from lmlab.training.checkpoint import (OPTIMIZER_FILE, RNG_FILE, STATE_FILE, flat_optimizer_state,
                                      optimizer_state_from)
from lmlab.training.sharded_checkpoint import CHECKPOINT_KIND

TRAINABLE_FILE = "trainable.safetensors"


@dataclass
class PPOState:
    """Where a PPO run stands after a step: what trainer_state.json holds."""

    step: int
    kl_coef: float
    history: list[dict[str, Any]]
    train_seconds: float


def trainable_tensors(policy: nn.Module, value_head: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors PPO trains, by name: the policy's trainable parameters (its adapters) and the value head."""
    tensors = {f"policy.{n}": p for n, p in policy.named_parameters() if p.requires_grad}
    tensors.update({f"value_head.{n}": p for n, p in value_head.named_parameters()})
    return tensors


def save_ppo_checkpoint(checkpoints: Path, state: PPOState, policy: nn.Module, value_head: nn.Module,
                        optimizer: torch.optim.Optimizer, generator: torch.Generator, queue: list[int]) -> Path:
    """Write checkpoints/step-NNNNNNN atomically, then drop the older checkpoints."""
    folder = checkpoints / f"step-{state.step:07d}"
    with replace_folder(folder, CHECKPOINT_KIND, overwrite=True) as tmp:
        save_safetensors({k: v.detach().contiguous() for k, v in trainable_tensors(policy, value_head).items()},
                         tmp / TRAINABLE_FILE)
        optimizer_tensors, groups = flat_optimizer_state(optimizer.state_dict())
        save_safetensors(optimizer_tensors, tmp / OPTIMIZER_FILE)
        save_safetensors({"generator": generator.get_state(), "torch": torch.get_rng_state(),
                          "queue": torch.tensor(queue, dtype=torch.int64)}, tmp / RNG_FILE)
        write_json(tmp / STATE_FILE, {"step": state.step, "kl_coef": state.kl_coef, "history": state.history,
                                      "train_seconds": state.train_seconds, "optimizer_param_groups": groups})
    for old in checkpoints.glob("step-*"):
        if old != folder:
            remove_folder(old)
    return folder


def load_ppo_checkpoint(folder: Path, policy: nn.Module, value_head: nn.Module, optimizer: torch.optim.Optimizer,
                        generator: torch.Generator) -> tuple[PPOState, list[int]]:
    """Put a checkpoint's tensors, optimizer moments and random states back; its state and the queued prompts."""
    saved = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    tensors = read_safetensors(folder / TRAINABLE_FILE)
    with torch.no_grad():
        for name, param in trainable_tensors(policy, value_head).items():
            param.copy_(tensors[name])
    optimizer.load_state_dict(optimizer_state_from(read_safetensors(folder / OPTIMIZER_FILE),
                                                   saved["optimizer_param_groups"]))
    rng = read_safetensors(folder / RNG_FILE)
    generator.set_state(rng["generator"])
    torch.set_rng_state(rng["torch"])
    state = PPOState(saved["step"], saved["kl_coef"], saved["history"], saved["train_seconds"])
    return state, rng["queue"].tolist()
