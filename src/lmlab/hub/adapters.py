"""A fine-tuned adapter folder as a model: the base model its adapter_config.json names, with the task head
it was trained with (when the fine-tune put one on) and the LoRA adapter (Hu et al. 2021) on top."""

from __future__ import annotations

from pathlib import Path

import torch

from lmlab.hub.resolve import LoadedModel, load_model
from lmlab.models.heads import TASK_HEADS, attach_head
from lmlab.models.lora import AdapterConfig, LoRAReport, load_adapter


def base_reference(model: str) -> str:
    """The base model as an adapter should name it: an absolute path for files and folders, else the name."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def load_adapted_model(adapter_folder: str | Path, dtype: torch.dtype = torch.float32) -> tuple[LoadedModel,
                                                                                                 LoRAReport]:
    """The base model an adapter folder names, with the adapter on it (and its classification head)."""
    adapter = AdapterConfig.load(Path(adapter_folder))
    loaded = load_model(adapter.base_model, dtype)
    head = adapter.base_config.get("head")
    if head in TASK_HEADS and loaded.model.config.head != head:
        names = adapter.base_config.get("extra", {}).get("id2label", {})
        attach_head(loaded.model, head, [names[str(i)] for i in range(len(names))])
    report = load_adapter(loaded.model, Path(adapter_folder))
    loaded.model.eval()
    return loaded, report
