"""Getting a pre-trained model ready to fine-tune: gradient checkpointing and a memory plan (its new task
head, if any, is `lmlab.models.heads.attach_head`).

- Gradient checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear
  Memory Cost") keeps only each block's input during the forward pass and
  recomputes the block's activations during the backward pass: about one extra
  forward pass of compute for activation memory that no longer grows with depth.
- The memory plan of a fine-tune: the weights of the whole model, but gradients
  and AdamW's two moments only for the parameters that train (which is what
  makes LoRA cheap: Hu et al. 2021, section 4.2), plus the activations of one
  micro-batch (`lmlab.planning.memory.activation_term`, Korthikanti et al. 2022).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lmlab.config import ModelConfig
from lmlab.data.finetune_data import Collator, Example
from lmlab.models import Transformer
from lmlab.planning.measure import saved_tensor_bytes
from lmlab.planning.memory import activation_term
from lmlab.planning.units import format_bytes
from lmlab.training.objectives import loss_sum

FP32_BYTES = 4
ADAMW_STATES = 2  # first and second moment
PROBE_TOKENS = 32  # the length of the sequence whose saved activations the plan counts


def id2label(config: ModelConfig) -> list[str]:
    """The label names of a classifier, by id (generic names when the config holds none)."""
    names = config.extra.get("id2label", {})
    return [names.get(str(i), f"LABEL_{i}") for i in range(config.num_labels)]


def _checkpointed(forward, *args, **kwargs):
    if torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def enable_gradient_checkpointing(model: Transformer) -> int:
    """Recompute every transformer block's activations in the backward pass; returns the number of blocks."""
    blocks = [block for stack in (model.encoder, model.decoder) if stack is not None for block in stack.layers]
    for block in blocks:
        block.forward = functools.partial(_checkpointed, block.forward)
    return len(blocks)


@dataclass
class MemoryPlan:
    """Planned memory of one training process, in bytes."""

    weights: float
    gradients: float
    optimizer_states: float
    activations: float
    n_total: int
    n_trainable: int

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer_states + self.activations

    def format(self) -> str:
        return (f"planned memory {format_bytes(self.total)}: weights {format_bytes(self.weights)} "
                f"({self.n_total:,} parameters, fp32), gradients {format_bytes(self.gradients)} and AdamW states "
                f"{format_bytes(self.optimizer_states)} ({self.n_trainable:,} trainable), activations "
                f"{format_bytes(self.activations)}")


def probe_activations(model: nn.Module, collator: Collator, n_tokens: int = PROBE_TOKENS,
                      compute_dtype: str = "fp32") -> tuple[float, float]:
    """(bytes per token, bytes per labelled token) autograd keeps for the backward pass of a generation fine-tune.

    Counted on the model itself rather than by formula: a forward pass of the training loss on one sequence
    of `n_tokens` tokens runs under `saved_tensors_hooks` (`lmlab.planning.measure.saved_tensor_bytes`), so
    whatever the run keeps is counted: each LoRA adapter's own dropped-out input and dropout mask, the
    activations a frozen layer does not keep, the head's input and logits on the labelled positions only
    (`logits_mask`). Two passes, every position labelled and the second half only, separate the per-token
    part from the per-labelled-token part (the vocabulary projection). Dropout draws do not touch the run's
    random state.
    """
    def saved(n_labelled: int) -> int:
        tokens = [3 + i % 50 for i in range(n_tokens + 1)]
        example = Example(tokens, targets=[False] * (n_tokens + 1 - n_labelled) + [True] * n_labelled)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=compute_dtype == "bf16")
        with torch.random.fork_rng(), autocast, torch.enable_grad():
            return saved_tensor_bytes(lambda: loss_sum(model, collator([example])), model.parameters())[1]

    was_training = model.training
    model.train()
    try:
        every, half = saved(n_tokens), saved(n_tokens // 2)
    finally:
        model.train(was_training)
    per_labelled = (every - half) / (n_tokens - n_tokens // 2)
    return (every - per_labelled * n_tokens) / n_tokens, per_labelled


def plan_memory(model: nn.Module, batch: int, seq_len: int, compute_dtype: str = "fp32",
                gradient_checkpointing: bool = False, collator: Collator | None = None, task: str = "generation",
                labelled: int | None = None) -> MemoryPlan:
    """Weights for every parameter; gradients and AdamW moments (fp32) for the trainable ones only; the
    activations of one micro-batch of `batch` sequences of `seq_len` tokens with at most `labelled` labelled
    positions each (default: all), measured per token by `probe_activations` for generation with a `collator`.
    Otherwise (other tasks, gradient checkpointing, no collator) the activations are Korthikanti et al.'s formula
    (`lmlab.planning.memory.activation_term`, 2 bytes per element under bf16 autocast)."""
    params = list(model.parameters())
    n_total = sum(p.numel() for p in params)
    n_trainable = sum(p.numel() for p in params if p.requires_grad)
    if collator is not None and task == "generation" and not gradient_checkpointing:
        per_token, per_labelled = probe_activations(model, collator, min(PROBE_TOKENS, seq_len), compute_dtype)
        activations = batch * (per_token * seq_len + per_labelled * (seq_len if labelled is None else labelled))
    else:
        activation_bytes = 2 if compute_dtype == "bf16" else FP32_BYTES
        activations = activation_term(model.config, batch, seq_len, activation_bytes, gradient_checkpointing).bytes
    return MemoryPlan(n_total * FP32_BYTES, n_trainable * FP32_BYTES, n_trainable * FP32_BYTES * ADAMW_STATES,
                      activations, n_total, n_trainable)
