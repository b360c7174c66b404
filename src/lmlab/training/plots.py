"""The loss curve of a training run: training loss per step and validation loss per evaluation (loss.png)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lmlab.io import save_figure


def plot_loss(history: list[dict[str, Any]], title: str, path: Path, unit: str) -> Path:
    """Draw the step records of metrics.jsonl to `path` (written whole or not at all, lmlab.io.save_figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in history], [math.nan if r["loss"] is None else r["loss"] for r in history], lw=0.8,
            alpha=0.7, label="train")  # a skipped non-finite step's loss is logged as null
    evals = [r for r in history if r.get("val_loss") is not None]
    if evals:
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel(f"loss ({unit})")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    try:
        return save_figure(fig, path, dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
