"""`lmlab <command>`: one entry point, one module per command group.

Each module in COMMAND_MODULES has `register(subparsers)`, which adds its
sub-command(s) and sets `func` on the parser to a function taking the parsed
namespace. The CLI is a thin shell: each `func` makes one call into the
Python API and prints the result.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from lmlab.errors import LmlabError

COMMAND_MODULES = [  # in the order of a model's life
    "lmlab.cli.models",
    "lmlab.cli.inspect",
    "lmlab.cli.tokenizer",
    "lmlab.cli.data",
    "lmlab.cli.pretrain",
    "lmlab.cli.consolidate",
    "lmlab.cli.runs",
    "lmlab.cli.generate",
    "lmlab.cli.chat",
    "lmlab.cli.run",
    "lmlab.cli.icl",
    "lmlab.cli.finetune",
    "lmlab.cli.align",
    "lmlab.cli.evaluate",
    "lmlab.cli.quantize",
    "lmlab.cli.export",
    "lmlab.cli.plan",
    "lmlab.cli.scaling",
    "lmlab.cli.serve",
]

DESCRIPTION = """\
lmlab: the whole life of a transformer language model.

build -> pre-train -> prompt -> fine-tune -> evaluate -> quantize -> plan -> serve

Run `lmlab <command> --help` for what each command does and what its options mean.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmlab", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads torch computes with (default: torch's choice, one per core); on a machine "
                             "shared with other work, fewer threads than cores avoid fighting over them")
    subparsers = parser.add_subparsers(title="commands", metavar="<command>")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def set_threads(n: int) -> None:
    if n < 1:
        raise LmlabError(f"--threads must be at least 1, got {n}")
    import torch

    torch.set_num_threads(n)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        if args.threads is not None:
            set_threads(args.threads)
        result = args.func(args)
    except LmlabError as err:
        print(f"lmlab: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lmlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
