"""Run tracking: where a run's per-step metrics go besides `metrics.jsonl`, which is always written.

- jsonl: `metrics.jsonl` alone, one JSON object per step (what `lmlab runs` reads).
- csv: also `metrics.csv`, one row per step, for spreadsheets and pandas.
- tensorboard: also event files under `tensorboard/`, written by TensorBoard's own writer
  (`torch.utils.tensorboard.SummaryWriter` over `tensorboard`'s event-file writer); view them with
  `tensorboard --logdir OUT/tensorboard`.

A logger is told the history a resumed run keeps, so its file agrees with `metrics.jsonl`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from lmlab.errors import LmlabError
from lmlab.io import write_text

LoggerKind = Literal["jsonl", "csv", "tensorboard"]
LOGGERS = ("jsonl", "csv", "tensorboard")
CSV_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
CSV_COLUMNS = ("step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "val_loss", "val_perplexity")
# TensorBoard tags of the step record's fields: one chart per tag, grouped by the part before "/".
TAGS = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm", "tokens_per_s": "train/tokens_per_s",
        "val_loss": "validation/loss", "val_perplexity": "validation/perplexity"}


class RunLogger(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class CsvLogger:
    """metrics.csv: the step records as rows (empty cells where a step did not evaluate)."""

    def __init__(self, folder: Path, history: Sequence[dict[str, Any]]):
        self.path = Path(folder) / CSV_FILE
        kept = io.StringIO(newline="")
        writer = csv.DictWriter(kept, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
        write_text(self.path, kept.getvalue())  # the header and the rows a resumed run keeps, atomically
        self._file = open(self.path, "a", newline="", encoding="utf-8", buffering=1)
        self._writer = csv.DictWriter(self._file, CSV_COLUMNS, extrasaction="ignore")

    def log(self, record: dict[str, Any]) -> None:
        self._writer.writerow(record)

    def close(self) -> None:
        self._file.close()


class TensorBoardLogger:
    """Scalars per step under `tensorboard/`; a resumed run purges the events logged after its checkpoint."""

    def __init__(self, folder: Path, start_step: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise LmlabError("--logger tensorboard needs the tensorboard package: pip install tensorboard") from None
        self._writer = SummaryWriter(str(Path(folder) / TENSORBOARD_DIR), purge_step=start_step + 1 if start_step
                                     else None)

    def log(self, record: dict[str, Any]) -> None:
        step = record["step"]
        for key, tag in TAGS.items():
            if key in record:
                self._writer.add_scalar(tag, record[key], step)
        for name, value in record.get("val_by_set", {}).items():
            self._writer.add_scalar(f"validation/loss_{name}", value, step)

    def close(self) -> None:
        self._writer.close()


def open_logger(kind: str, folder: Path, history: Sequence[dict[str, Any]], start_step: int) -> RunLogger | None:
    """The logger `kind` names for the run in `folder` (None for jsonl: metrics.jsonl is always written)."""
    if kind not in LOGGERS:
        raise LmlabError(f"unknown logger {kind!r}; choose one of {', '.join(LOGGERS)}")
    if kind == "csv":
        return CsvLogger(folder, history)
    if kind == "tensorboard":
        return TensorBoardLogger(folder, start_step)
    return None


__all__ = ["CSV_FILE", "LOGGERS", "TAGS", "TENSORBOARD_DIR", "CsvLogger", "LoggerKind", "RunLogger",
           "TensorBoardLogger", "open_logger"]
