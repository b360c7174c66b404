"""`lmlab runs`: a table of training runs and their loss curves on one plot. Also `--logger`, the option
`lmlab pretrain` and `lmlab finetune` share. A thin shell over `lmlab.training.runs`."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmlab.cli.options import field_default
from lmlab.training.loggers import LOGGERS
from lmlab.training.runs import find_runs, plot_runs, runs_table
from lmlab.training.trainer import TrainConfig


def add_logger_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--logger", choices=LOGGERS, default=field_default(TrainConfig, "logger"),
                        help="where the step metrics also go: jsonl (metrics.jsonl only, always written), csv "
                             "(metrics.csv), tensorboard (event files in OUT/tensorboard; view with "
                             "`tensorboard --logdir OUT/tensorboard`) (default %(default)s)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "runs", help="compare training runs: settings that differ, final and best losses, loss curves",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=("Read the runs `lmlab pretrain` and `lmlab finetune` wrote and print one row per run: the\n"
                     "settings that differ between them, steps, tokens, final train and validation loss, the best\n"
                     "validation loss and its step, wall time. Their loss curves go on one plot."),
        epilog="examples:\n  lmlab runs runs/lr-1e-3 runs/lr-3e-3 runs/lr-1e-2\n  lmlab runs runs/ --plot curves.png",
    )
    parser.add_argument("folders", nargs="*", default=["runs"], metavar="DIR",
                        help="run folders, or folders holding runs (default: runs)")
    parser.add_argument("--plot", type=Path, default=Path("runs.png"), metavar="PNG",
                        help="where to draw the loss curves (default runs.png)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    runs = find_runs(args.folders)
    print(runs_table(runs))
    print(f"loss curves: {plot_runs(runs, args.plot)}")
    return 0
