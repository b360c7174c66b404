"""Compare training runs: what differs in their settings, how far their losses went, their curves on one plot.

A run is a folder `lmlab pretrain` or `lmlab finetune` wrote: `run.json` (the
settings that decide the weights), `metrics.jsonl` (one record per step), and,
when it finished, the model folder whose `model_card.json` holds the measured
wall time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError
from lmlab.hub.model_card import read_card_facts
from lmlab.io import save_figure
from lmlab.training.run_folder import METRICS_FILE, RUN_FILE


@dataclass
class RunSummary:
    """One run, read from its folder."""

    path: Path
    settings: dict[str, Any]  # flattened: {"train.lr": 0.001, ...}
    history: list[dict[str, Any]]
    wall_seconds: float | None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def steps(self) -> int:
        return self.history[-1]["step"] if self.history else 0

    @property
    def tokens(self) -> int | None:
        return self.history[-1].get("tokens") if self.history else None

    @property
    def final_loss(self) -> float | None:
        return self.history[-1]["loss"] if self.history else None

    @property
    def evaluations(self) -> list[dict[str, Any]]:
        return [r for r in self.history if "val_loss" in r]

    @property
    def final_val_loss(self) -> float | None:
        return self.evaluations[-1]["val_loss"] if self.evaluations else None

    @property
    def best(self) -> dict[str, Any] | None:
        """The evaluation with the lowest validation loss."""
        return min(self.evaluations, key=lambda r: r["val_loss"]) if self.evaluations else None


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_run(folder: str | Path) -> RunSummary:
    folder = Path(folder)
    run_file = folder / RUN_FILE
    if not run_file.is_file():
        raise LmlabError(f"{folder} is not a training run (no {RUN_FILE}); give folders written by lmlab pretrain "
                         "or lmlab finetune")
    try:
        identity = json.loads(run_file.read_text(encoding="utf-8")).get("identity", {})
        history = [json.loads(line) for line in (folder / METRICS_FILE).read_text(encoding="utf-8").splitlines()
                   if line.strip()] if (folder / METRICS_FILE).is_file() else []
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise LmlabError(f"{folder}: unreadable run files ({err})") from None
    facts = read_card_facts(folder / "model")
    return RunSummary(folder, _flatten(identity), history, facts.wall_seconds if facts else None)


def find_runs(folders: list[str | Path]) -> list[RunSummary]:
    """The runs named, or, for a folder that is not a run itself, the runs directly inside it."""
    runs = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise LmlabError(f"no such run folder: {folder}")
        if (folder / RUN_FILE).is_file():
            runs.append(read_run(folder))
        else:
            runs += [read_run(child) for child in sorted(folder.iterdir()) if (child / RUN_FILE).is_file()]
    if not runs:
        raise LmlabError(f"no training runs in {', '.join(str(f) for f in folders)}")
    return runs


def differing_settings(runs: list[RunSummary]) -> list[str]:
    """The settings whose values are not the same in every run (a setting missing from a run counts)."""
    keys = sorted(set().union(*(r.settings for r in runs)))
    return [k for k in keys if len({json.dumps(r.settings.get(k), sort_keys=True) for r in runs}) > 1]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def runs_table(runs: list[RunSummary]) -> str:
    """One row per run: the settings that differ, steps, tokens, final and best losses, wall time."""
    differ = differing_settings(runs)
    header = ["run", *differ, "steps", "tokens", "train loss", "val loss", "best val loss (step)", "wall"]
    rows = []
    for r in runs:
        best = r.best
        rows.append([r.name, *(_cell(r.settings.get(k)) for k in differ), str(r.steps),
                     f"{r.tokens:,}" if r.tokens is not None else "-", _cell(r.final_loss), _cell(r.final_val_loss),
                     f"{best['val_loss']:.4g} ({best['step']})" if best else "-",
                     f"{r.wall_seconds:.0f} s" if r.wall_seconds is not None else "-"])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if not differ:
        lines.append("(the runs share every setting)")
    return "\n".join(lines)


def plot_runs(runs: list[RunSummary], out: Path) -> Path:
    """Training loss (thin) and validation loss (markers) of every run against tokens seen, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, r in enumerate(runs):
        color = f"C{i % 10}"
        x_of = (lambda rec: rec.get("tokens", rec["step"]))
        ax.plot([x_of(h) for h in r.history], [h["loss"] for h in r.history], color=color, lw=0.8, alpha=0.5,
                label=f"{r.name} train")
        if r.evaluations:
            ax.plot([x_of(h) for h in r.evaluations], [h["val_loss"] for h in r.evaluations], "o-", color=color,
                    label=f"{r.name} validation")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(f"{len(runs)} runs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    try:
        return save_figure(fig, out, dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)


__all__ = ["RunSummary", "differing_settings", "find_runs", "plot_runs", "read_run", "runs_table"]
