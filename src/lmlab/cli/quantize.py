"""`lmlab quantize`: store a model's weights in fewer bits and show what it costs in perplexity.

A thin shell over `lmlab.hub.quantize.quantize_checkpoint`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lmlab.cli.options import Applies, check_applies, field_default
from lmlab.errors import LmlabError
from lmlab.hub.resolve import DEFAULT_MODEL
from lmlab.planning.units import format_bytes
from lmlab.hub.quantized_checkpoint import DTYPES
from lmlab.quantization.int4 import DEFAULT_GROUP_SIZE, GROUP_SIZES, Int4Spec
from lmlab.hub.quantize import QuantizeResult, quantize_checkpoint
from lmlab.quantization.schemes import GRANULARITIES, SCHEMES, QuantSpec

EXAMPLES = """\
examples:
  lmlab quantize --out smollm2-int8                 # int8, absmax, one scale per output channel
  lmlab quantize --dtype int4 --group-size 64 --out smollm2-int4
  lmlab generate smollm2-int4 --prompt "Hello"      # loads back as int4
  lmlab quantize --dtype bf16 --out smollm2-bf16
  lmlab quantize --scheme zeropoint --granularity group --group-size 64 --out smollm2-int8-g64
  lmlab quantize --out smollm2-int8 --eval-text my_text.txt --eval-tokens 2048
"""

INT8_DEFAULTS = QuantSpec()  # what --scheme, --granularity and --group-size leave unsaid (None) become for int8


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quantize", help="quantize a model to fp16, bf16, int8 or int4 and compare size and perplexity",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description=(
            "Store a model's weights in fewer bits and write it as a checkpoint folder. fp16 and bf16 are\n"
            "a cast (2 bytes per weight). int8 keeps 1 byte per weight plus a float scale per block of\n"
            "weights: W ≈ (q - zero) × scale. int4 keeps half a byte per weight plus a scale s and an\n"
            "offset z per group of --group-size inputs: W ≈ (q - 8) × s + z, q in 0..15. Per-channel int8\n"
            "and int4 are multiplied by PyTorch's low-bit CPU kernels without making a float copy. The\n"
            "token embedding and the LM head are quantized too (for a tied head, one table serves both).\n\n"
            "Prints the size of the weights and files before and after, and the perplexity of the model\n"
            "before and after (reloaded from the written folder) on the same text."
        ),
    )
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                        help="embedded model, preset, checkpoint folder, .gguf file or hub id "
                             f"(default: {DEFAULT_MODEL})")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="the folder to write (refused if it exists and is not empty, unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace the --out folder if it exists")
    parser.add_argument("--dtype", default=field_default(quantize_checkpoint, "dtype"), metavar="|".join(DTYPES),
                        help="fp16: 5 exponent and 10 fraction bits, range ±65,504; bf16: fp32's 8 exponent bits "
                             "and 7 fraction bits; int8: integers -128..127 with scales; int4: integers 0..15 with "
                             "a scale and an offset per group (default %(default)s)")
    group = parser.add_argument_group("int8 and int4 options")
    group.add_argument("--scheme", metavar="|".join(SCHEMES),
                       help="absmax (symmetric): scale = max|w| / 127, q = round(w / scale), zero stays 0; "
                            "zeropoint (asymmetric, affine): scale = (max - min) / 255 and an integer zero point "
                            f"so the 256 codes span [min, max] (default {INT8_DEFAULTS.scheme})")
    group.add_argument("--granularity", metavar="|".join(GRANULARITIES),
                       help="which weights share a scale: tensor (one per matrix), channel (one per output row) "
                            "or group (one per --group-size consecutive inputs of a row); finer costs a little "
                            "more storage and keeps outliers from coarsening their neighbours "
                            f"(default {INT8_DEFAULTS.granularity})")
    group.add_argument("--group-size", type=int, metavar="G",
                       help=f"columns per group: for int8 with --granularity group (default "
                            f"{INT8_DEFAULTS.group_size}); for int4 one of {', '.join(map(str, GROUP_SIZES))} "
                            f"(default {DEFAULT_GROUP_SIZE}; the layers' input sizes must be multiples of it)")
    group.add_argument("--skip-embeddings", action="store_true",
                       help="keep the token embedding and the LM head in fp32 (bigger file, for comparison)")
    evaluation = parser.add_argument_group("perplexity")
    evaluation.add_argument("--eval-text", type=Path, metavar="FILE",
                            help="a UTF-8 text file to measure perplexity on (default: lmlab's shipped dialogues)")
    evaluation.add_argument("--eval-tokens", type=int, default=field_default(quantize_checkpoint, "eval_tokens"),
                            metavar="N", help="score the first N tokens of the text (default %(default)s)")
    evaluation.add_argument("--no-eval", action="store_true",
                            help="skip the perplexity measurement (needed for models that are not causal LMs)")
    parser.set_defaults(func=check_applies(parser, RULES, run_quantize))


RULES = (
    Applies("--group-size", lambda a: a.granularity == "group" or a.dtype != "int8",
            "only applies to --granularity group (or --dtype int4)"),
    *(Applies(option, lambda a: not a.no_eval, "does nothing with --no-eval")
      for option in ("--eval-text", "--eval-tokens")),
)


def _spec(args: argparse.Namespace) -> QuantSpec | Int4Spec | None:
    int8_options = {"--scheme": args.scheme, "--granularity": args.granularity}
    if args.dtype == "int4":
        given = [name for name, value in int8_options.items() if value is not None]
        if given:
            raise LmlabError(f"{', '.join(given)} only applies to --dtype int8 (int4 is min-max in groups)")
        return Int4Spec(DEFAULT_GROUP_SIZE if args.group_size is None else args.group_size)
    if args.dtype != "int8":
        given = [name for name, value in {**int8_options, "--group-size": args.group_size}.items()
                 if value is not None]
        if given or args.skip_embeddings:
            raise LmlabError(f"{', '.join(given) or '--skip-embeddings'} only applies to --dtype int8 or int4")
        return None
    return QuantSpec(args.scheme or INT8_DEFAULTS.scheme, args.granularity or INT8_DEFAULTS.granularity,
                     INT8_DEFAULTS.group_size if args.group_size is None else args.group_size)


def describe(result: QuantizeResult) -> list[str]:
    """The before/after table that `lmlab quantize` prints."""
    after = result.dtype
    if isinstance(result.spec, Int4Spec):
        after = f"int4, groups of {result.spec.group_size}" + ("" if result.include_embeddings else ", fp32 embeddings")
    elif result.spec is not None:
        grain = f"per {result.spec.granularity}" + (
            f" of {result.spec.group_size}" if result.spec.granularity == "group" else "")
        after = f"int8 {result.spec.scheme}, {grain}" + ("" if result.include_embeddings else ", fp32 embeddings")
    rows = [("", "before (fp32)", f"after ({after})"),
            ("weights", format_bytes(result.weight_bytes_before), format_bytes(result.weight_bytes_after)),
            ("files", f"{format_bytes(result.source_bytes)} ({result.source.name})" if result.source else "-",
             f"{format_bytes(result.file_bytes_after)} ({result.size_ratio:.1%} of the fp32 weights)")]
    if result.perplexity_before is not None:
        rows.append(("perplexity", f"{result.perplexity_before.ppl:.4f}",
                     f"{result.perplexity_after.ppl:.4f} ({result.perplexity_change:+.2%})"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}".rstrip() for a, b, c in rows]
    if result.eval_source:
        lines.append(f"perplexity on {result.eval_source}")
    lines.append(f"wrote {result.out}")
    return lines


def run_quantize(args: argparse.Namespace) -> int:
    result = quantize_checkpoint(args.model, args.out, args.dtype, _spec(args), not args.skip_embeddings,
                                 evaluate=not args.no_eval, eval_text=args.eval_text, eval_tokens=args.eval_tokens,
                                 overwrite=args.overwrite)
    print("\n".join(describe(result)))
    return 0
