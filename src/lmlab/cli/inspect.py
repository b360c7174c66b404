"""`lmlab inspect ...`: look inside models and number formats.

Each sub-command has a small `_add_<name>(sub)` that adds its parser, so a new
one is one function and one line in `register`.
"""

from __future__ import annotations

import argparse

from lmlab.cli.options import field_default
from lmlab.errors import LmlabError
from lmlab.hub.resolve import load_model
from lmlab.inspect.attention import attention_map, format_table, plot
from lmlab.inspect.floats import DTYPES, inspect_float


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("inspect", help="look inside models and number formats",
                                   description="Look inside models and number formats.")
    sub = parser.add_subparsers(title="what to inspect", metavar="<what>")
    parser.set_defaults(func=lambda _args: parser.print_help() or 2)
    _add_params(sub)
    _add_attention(sub)
    _add_float(sub)


def _add_params(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "params", help="where a model's parameters are: per component, per layer, total",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Count MODEL's parameters by component (embeddings, attention, feed-forward, norms, head), per\n"
            "layer and in total, with the formula for each row. Computed from the config alone, so it works\n"
            "for models far too big to build here (gpt3-175b), and checked against the built model when it\n"
            "is small enough (--check).\n\n"
            "examples: lmlab inspect params bert-base\n"
            "          lmlab inspect params smollm2-135m-instruct --check"
        ),
    )
    parser.add_argument("model", help="a preset, embedded model, checkpoint folder, .gguf file or hub id")
    parser.add_argument("--check", action="store_true",
                        help="also build the model (on the meta device: no memory) and compare its tensors")
    parser.set_defaults(func=_run_params)


def _run_params(args: argparse.Namespace) -> int:
    import torch

    from lmlab.hub.resolve import resolve_config
    from lmlab.planning.params import count_model_parameters, count_parameters, parameter_table, summarize
    from lmlab.models import Transformer
    from lmlab.planning.units import format_count

    config = resolve_config(args.model)
    rows = parameter_table(config)
    total = count_parameters(config)
    print(f"{args.model}: {config.arch}, d_model {config.d_model}, {config.n_head} heads "
          f"({config.n_kv_head} kv), d_ff {config.d_ff}, vocab {config.vocab_size}")
    header = f"{'stack':<9} {'component':<16} {'per layer':>14} {'layers':>6} {'total':>16} {'share':>6}  formula"
    print(header)
    print("-" * len(header))
    for row in rows:
        share = 100.0 * row.total / total if total else 0.0
        print(f"{row.stack:<9} {row.component:<16} {row.per_layer:>14,} {row.n_layers:>6} {row.total:>16,} "
              f"{share:>5.1f}%  {row.formula}")
    print("-" * len(header))
    print(f"{'total':<9} {'':<16} {'':>14} {'':>6} {total:>16,}         = {format_count(total)}")
    if args.check:
        with torch.device("meta"):
            model = Transformer(config)
        built = count_model_parameters(model)
        if built != summarize(rows):
            raise LmlabError("the built model's tensors disagree with the formula table (a bug: please report)")
        print(f"checked: the built model holds the same {sum(built.values()):,} parameters, component by component")
    return 0


def _add_attention(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "attention", help="draw which tokens attend to which (an attention map)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run MODEL on TEXT and show the attention weights of one layer and head: row i is how token i\n"
            "spreads its attention over the tokens (each row sums to 1). Decoders cannot look ahead, so\n"
            "their maps are lower-triangular.\n\n"
            "example: lmlab inspect attention smollm2-135m-instruct --text 'The cat sat on the mat' \\\n"
            "             --layer 3 --head 0 --out map.png"
        ),
    )
    parser.add_argument("model", help="a preset, embedded model, checkpoint folder, .gguf file or hub id")
    parser.add_argument("--text", required=True, help="the text to run through the model")
    parser.add_argument("--layer", type=int, default=field_default(attention_map, "layer"),
                        help="which layer, counting from 0 (default %(default)s)")
    parser.add_argument("--head", type=int, default=field_default(attention_map, "head"),
                        help="which attention head, counting from 0 (default %(default)s)")
    parser.add_argument("--stack", choices=("encoder", "decoder", "cross"),
                        help="encoder-decoder models: encoder self-attention, decoder self-attention, or the "
                             "decoder's cross-attention to the encoder (default: the model's main stack)")
    parser.add_argument("--target", help="encoder-decoder models: the decoder's text (default: TEXT)")
    parser.add_argument("--out", help="save a heatmap image here (PNG)")
    parser.add_argument("--table", action="store_true", help="print the weights as a table")
    parser.set_defaults(func=_run_attention)


def _run_attention(args: argparse.Namespace) -> int:
    loaded = load_model(args.model)
    amap = attention_map(loaded, args.text, args.layer, args.head, args.stack, args.target)
    if args.table or not args.out:
        print(format_table(amap))
    if args.out:
        print(f"wrote {plot(amap, args.out, f'{args.model}: {amap.stack} layer {amap.layer}, head {amap.head}')}")
    return 0


def _add_float(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "float", help="how a number is stored in fp32, fp16, bf16 and int8",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Show how VALUE is stored: sign, exponent and fraction bits, the value actually kept, its error,\n"
            "and the format's range, smallest normal number and epsilon.\n\n"
            "fp32 has 8 exponent and 23 fraction bits; fp16 5 and 10 (precise, but only up to 65,504);\n"
            "bf16 8 and 7 (fp32's range, less precision). int8 stores round(x / scale) with\n"
            "scale = absmax / 127 (absmax quantization): pi becomes 3 with the default absmax of 127.\n\n"
            "example: lmlab inspect float 3.141592 --dtype fp16"
        ),
    )
    parser.add_argument("value", help="the number to store, e.g. 3.141592, -2.5e-6, inf")
    parser.add_argument("--dtype", action="append", metavar="|".join(DTYPES),
                        help="number format (repeat for several; default: all four)")
    parser.add_argument("--absmax", type=float, default=field_default(inspect_float, "absmax"),
                        help="int8 only: the largest magnitude in the tensor, which maps to 127 "
                             "(default 127, a scale of 1: plain rounding to an integer)")
    parser.set_defaults(func=_run_float)


def _run_float(args: argparse.Namespace) -> int:
    try:
        value = float(args.value)
    except ValueError:
        raise LmlabError(f"not a number: {args.value!r}") from None
    blocks = ["\n".join(inspect_float(value, dtype, args.absmax).describe()) for dtype in args.dtype or DTYPES]
    print("\n\n".join(blocks))
    return 0
