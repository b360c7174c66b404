"""A training checkpoint: everything a run needs to continue exactly where it stopped.

checkpoints/step-NNNNNNN/ holds the weights (an lmlab checkpoint, lmlab.hub.checkpoint; sharded strategies
write torch.distributed.checkpoint shards instead, lmlab.training.sharded_checkpoint), the AdamW moments
(optimizer.safetensors, one tensor per parameter index and state), every rank's random-number generator
states and the collator's (rng.safetensors), and trainer_state.json: the step (the learning rate is a
function of it), the samples seen, the settings, the time trained and the skipped steps. trainer_state.json
is written last, so a folder holding it is a whole checkpoint. On CPU a run resumed from it ends with the
same weights, bit for bit, as one that never stopped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lmlab.config import ModelConfig
from lmlab.errors import LmlabError
from lmlab.hub.checkpoint import LMLAB_CONFIG, write_checkpoint
from lmlab.io import read_safetensors, replace_folder, save_safetensors, write_json
from lmlab.tokenizers.base import TokenizerProtocol
from lmlab.training.distributed import DistEnv, Strategy, gather_to_main
from lmlab.training.sharded_checkpoint import CHECKPOINT_KIND, is_sharded, load_sharded, save_sharded

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"


def rng_state(collator: Any, env: DistEnv) -> dict[str, torch.Tensor]:
    """This rank's random-number generator states: torch's, CUDA's, and the collator's (span corruption)."""
    state = {"torch": torch.get_rng_state()}
    if env.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(env.device)
    if hasattr(collator, "state_dict"):
        state.update({f"collator.{k}": v for k, v in collator.state_dict().items()})
    return state


def flat_optimizer_state(optimizer_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """An optimizer's state dict as tensors for safetensors (named "{parameter index}.{key}") and parameter
    groups for JSON (betas as lists); optimizer_state_from is the inverse."""
    tensors = {f"{index}.{key}": value for index, entry in optimizer_state["state"].items()
               for key, value in entry.items()}
    return tensors, [{**g, "betas": list(g["betas"])} for g in optimizer_state["param_groups"]]


def optimizer_state_from(tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The optimizer state dict that flat_optimizer_state wrote as `tensors` and `groups`."""
    entries: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        entries.setdefault(int(index), {})[key] = value
    return {"state": entries, "param_groups": [{**g, "betas": tuple(g["betas"])} for g in groups]}


def save_training_checkpoint(folder: Path, wrapped: torch.nn.Module, optimizer: torch.optim.Optimizer,
                             strategy: Strategy, env: DistEnv, collator: Any, state: dict[str, Any],
                             tokenizer: TokenizerProtocol | None = None) -> None:
    """Write `folder` atomically (rank 0; with sharding every rank writes its shards); call on every rank."""
    rng = gather_to_main(rng_state(collator, env), env)

    def write_run_state(tmp: Path) -> None:
        save_safetensors({f"rank{r}.{k}": v for r, states in enumerate(rng) for k, v in states.items()},
                         tmp / RNG_FILE)
        write_json(tmp / STATE_FILE, state)  # last: a folder with trainer_state.json is a whole checkpoint

    if strategy.sharded:  # every rank writes its shards (torch.distributed.checkpoint)
        save_sharded(folder, strategy.unwrap(wrapped), optimizer, env, tokenizer, write_run_state)
        return
    optimizer_state = strategy.optimizer_state(wrapped, optimizer)
    if env.is_main:
        with replace_folder(folder, CHECKPOINT_KIND, overwrite=True) as staging:
            write_checkpoint(strategy.unwrap(wrapped), staging, tokenizer)
            tensors, state["optimizer_param_groups"] = flat_optimizer_state(optimizer_state)
            save_safetensors(tensors, staging / OPTIMIZER_FILE)
            write_run_state(staging)


def read_trainer_state(checkpoint: Path, model_config: ModelConfig) -> dict[str, Any]:
    """trainer_state.json of a checkpoint of a model with `model_config` (another model is refused)."""
    saved = ModelConfig.load(checkpoint / LMLAB_CONFIG)
    if saved.to_dict() != model_config.to_dict():
        raise LmlabError(f"{checkpoint} holds a model with a different config; it cannot be resumed into this one")
    return json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))


def restore_training_checkpoint(checkpoint: Path, state: dict[str, Any], wrapped: torch.nn.Module,
                                optimizer: torch.optim.Optimizer, strategy: Strategy, env: DistEnv, collator: Any,
                                say: Callable[[str], None]) -> None:
    """Load the optimizer state and this rank's random states (the weights are loaded before wrapping, or with
    the shards); with another number of processes the random streams restart from the seed, said by `say`."""
    if is_sharded(checkpoint):
        load_sharded(checkpoint, strategy.unwrap(wrapped), optimizer)
    else:
        strategy.load_optimizer_state(wrapped, optimizer, optimizer_state_from(
            read_safetensors(checkpoint / OPTIMIZER_FILE), state["optimizer_param_groups"]))
    rng = read_safetensors(checkpoint / RNG_FILE)
    if state["world_size"] != env.world_size:
        say(f"note: the checkpoint was written by {state['world_size']} process(es), this run has "
            f"{env.world_size}; random streams restart from the seed, so the continuation is not "
            "bit-identical to an uninterrupted run")
        return
    mine = {k.split(".", 1)[1]: v for k, v in rng.items() if k.startswith(f"rank{env.rank}.")}
    torch.set_rng_state(mine["torch"])
    if "cuda" in mine:
        torch.cuda.set_rng_state(mine["cuda"], env.device)
    collator_state = {k.removeprefix("collator."): v for k, v in mine.items() if k.startswith("collator.")}
    if collator_state:
        collator.load_state_dict(collator_state)
