"""`lmlab evaluate`: measure a model on a data file - perplexity of a text, or its answers scored with
ROUGE, BLEU, accuracy or F1. A thin shell over `lmlab.evaluation.harness`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmlab.cli.generate import add_model_arguments, add_sampling_arguments, generation_config, load, unescape
from lmlab.cli.options import SAMPLING_RULES, Applies, check_applies
from lmlab.errors import LmlabError, did_you_mean
from lmlab.evaluation.harness import METRICS, PromptedModel, evaluate_records, text_perplexity
from lmlab.evaluation.metrics import AVERAGES
from lmlab.prompting import PromptTemplate, template_fields
from lmlab.records import read_records

EXAMPLES = """\
examples:
  lmlab evaluate --data input.txt --metric perplexity --stride 256
  lmlab evaluate my_checkpoint --data test.jsonl --metric rouge,bleu --prompt-field prompt --reference-field completion
  lmlab evaluate --data dialogsum.dev.jsonl --metric rouge --prompt-field dialogue --reference-field summary \\
      --instruction "Summarize the following conversation." --template "Dialogue:\\n\\n{dialogue}" --n 20
  lmlab evaluate --data scored.jsonl --metric accuracy,f1 --prediction-field prediction --reference-field label
"""

DEFAULT_REFERENCE_FIELD = {"rouge": "completion", "bleu": "completion", "accuracy": "label", "f1": "label"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="measure a model: perplexity of a text, or its answers scored with ROUGE/BLEU/accuracy/F1",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description=(
            "Measure a model on a data file.\n\n"
            "perplexity          on a .txt file: exp of the mean negative log-likelihood per token, how\n"
            "                    surprised the model is by the text (lower is better). Texts longer than a\n"
            "                    window are scored window by window, each --stride tokens after the last.\n"
            "rouge, bleu         on records (.jsonl/.json/.csv): the model answers each record's prompt,\n"
            "                    and the answer is compared with the reference by n-gram overlap: ROUGE-1/2/\n"
            "                    L/Lsum (0-1, recall-oriented, for summaries), BLEU (0-100, precision-\n"
            "                    oriented, for translation).\n"
            "accuracy, f1        on records: the share of answers equal to the label, and precision, recall\n"
            "                    and F1 per label, averaged (--average). An answer's first line is its\n"
            "                    label, compared without case, surrounding spaces or a final period.\n\n"
            "With --prediction-field the records already hold the answers: they are scored, no model runs.\n"
            "In --template, --instruction and --stop, \\n stands for a new line."
        ),
    )
    add_model_arguments(parser)
    parser.add_argument("--data", type=Path, required=True, metavar="FILE",
                        help="a .txt file for perplexity; a .jsonl, .json or .csv file of records otherwise")
    parser.add_argument("--metric", default="perplexity", metavar="NAME[,NAME]",
                        help=f"what to measure: {', '.join(METRICS)}; several separated by commas, e.g. "
                             "rouge,bleu or accuracy,f1 (default: %(default)s)")
    text = parser.add_argument_group("perplexity")
    text.add_argument("--max-length", type=int, metavar="N",
                      help="tokens the model sees at once (default: its context window, at most 1024)")
    text.add_argument("--stride", type=int, metavar="N",
                      help="tokens between the starts of consecutive windows; each token after the first window "
                           "keeps at least max_length - stride tokens of context (default: half a window)")
    records = parser.add_argument_group("records")
    records.add_argument("--prompt-field", default="prompt", metavar="NAME",
                         help="the field holding the prompt (default: %(default)s)")
    records.add_argument("--reference-field", action="append", metavar="NAME",
                         help="the field holding the reference; repeat for several references (ROUGE keeps the "
                              "best-matching, BLEU uses all) (default: completion for rouge/bleu, label for "
                              "accuracy/f1)")
    records.add_argument("--prediction-field", metavar="NAME",
                         help="score the answers in this field instead of generating them")
    records.add_argument("--template", metavar="TEXT",
                         help="how a record becomes the prompt: a format string with {field} names, \\n for a new "
                              "line (default: '{PROMPT_FIELD}', the prompt as it is)")
    records.add_argument("--instruction", default="", metavar="TEXT",
                         help="text put before each prompt (the system message with --chat)")
    records.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                         help="render each prompt with the model's chat template (default: on when it has one)")
    records.add_argument("--n", type=int, metavar="N", help="evaluate the first N records only")
    records.add_argument("--average", choices=AVERAGES, default="macro",
                         help="F1 over several labels: macro (each label counts the same), micro (each example "
                              "counts the same), binary (only --positive-label) (default: %(default)s)")
    records.add_argument("--positive-label", default="1", metavar="LABEL",
                         help="the label scored by --average binary (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=4, metavar="B",
                        help="windows (perplexity) or prompts (generation) run together (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_sampling_arguments(parser)
    parser.set_defaults(func=check_applies(parser, RULES, run))


def _metrics(args: argparse.Namespace) -> list[str]:
    return [name.strip().lower() for name in args.metric.split(",")]


def _perplexity(args: argparse.Namespace) -> bool:
    return "perplexity" in _metrics(args)


def _model_answers(args: argparse.Namespace) -> bool:
    return not _perplexity(args) and args.prediction_field is None


RECORDS_ONLY = "only applies to records scored with rouge, bleu, accuracy or f1, not to --metric perplexity"
ANSWERS_ONLY = ("only applies when the model answers the records: not with --metric perplexity, nor with "
                "--prediction-field (the records already hold the answers)")
GENERATION_OPTIONS = ("--max-new-tokens", "--do-sample", "--repetition-penalty", "--num-beams", "--stop",
                      "--truncate")
RULES = (
    *(Applies(option, _perplexity, "only applies to --metric perplexity (windows over a text file)")
      for option in ("--max-length", "--stride")),
    *(Applies(option, lambda a: not _perplexity(a), RECORDS_ONLY)
      for option in ("--reference-field", "--prediction-field", "--n")),
    *(Applies(option, _model_answers, ANSWERS_ONLY)
      for option in ("--prompt-field", "--template", "--instruction", "--chat", *GENERATION_OPTIONS)),
    Applies("MODEL", lambda a: a.prediction_field is None,
            "is not used with --prediction-field: the records already hold the answers", name="model"),
    Applies("--average", lambda a: "f1" in _metrics(a), "only applies to --metric f1"),
    Applies("--positive-label", lambda a: "f1" in _metrics(a) and a.average == "binary",
            "only applies to --metric f1 with --average binary"),
    *SAMPLING_RULES,
)


def parse_metrics(text: str) -> list[str]:
    metrics = []
    for name in (part.strip().lower() for part in text.split(",")):
        if name not in METRICS:
            raise LmlabError(f"unknown metric {name!r}{did_you_mean(name, METRICS)}; use {', '.join(METRICS)}")
        if name not in metrics:
            metrics.append(name)
    if "perplexity" in metrics and len(metrics) > 1:
        raise LmlabError("perplexity scores a text file, the other metrics score records: evaluate them separately")
    return metrics


def run(args: argparse.Namespace) -> int:
    metrics = parse_metrics(args.metric)
    if args.batch_size < 1:
        raise LmlabError(f"--batch-size must be at least 1, got {args.batch_size}")
    if metrics == ["perplexity"]:
        return run_perplexity(args)
    return run_records(args, metrics)


def run_perplexity(args: argparse.Namespace) -> int:
    if args.data.suffix.lower() != ".txt":
        raise LmlabError(f"perplexity scores a plain text file (.txt), got {args.data}")
    try:
        text = args.data.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LmlabError(f"{args.data}: no such file") from None
    except UnicodeDecodeError as err:
        raise LmlabError(f"{args.data}: not valid UTF-8 text (byte {err.start})") from None
    loaded = load(args)
    result = text_perplexity(loaded.model, loaded.tokenizer, text, args.max_length, args.stride, args.batch_size,
                             progress=not args.no_progress)
    max_length = args.max_length or min(loaded.model.config.max_seq_len, 1024)
    print_table(args, [
        ("perplexity", f"{result.ppl:.3f}"),
        ("mean NLL (nats/token)", f"{result.nll:.4f}"),
        ("tokens scored", f"{result.n_tokens:,}"),
        ("window / stride", f"{max_length} / {args.stride or max(1, max_length // 2)} tokens"),
    ], args.model)
    return 0


def run_records(args: argparse.Namespace, metrics: list[str]) -> int:
    reference_fields = args.reference_field or [DEFAULT_REFERENCE_FIELD[metrics[0]]]
    template = None
    if args.prediction_field:
        needed = [*reference_fields, args.prediction_field]
    else:
        template_text = unescape(args.template) if args.template else "{" + args.prompt_field + "}"
        template = PromptTemplate(instruction=unescape(args.instruction), input_template=template_text,
                                  input_field=args.prompt_field, target_field=reference_fields[0])
        needed = [*reference_fields, *template_fields(template_text)]
    if args.n is not None and args.n < 1:
        raise LmlabError(f"--n must be at least 1, got {args.n}")
    records = read_records(args.data, needed)[: args.n]
    config = generation_config(args)
    prompted = None
    if template is not None:
        loaded = load(args)
        prompted = PromptedModel.create(loaded.model, loaded.tokenizer, args.chat)
    evaluation = evaluate_records(records, metrics, reference_fields, prompted, template, config,
                                  args.prediction_field, args.batch_size, args.average, args.positive_label,
                                  progress=not args.no_progress)
    for notice in evaluation.notices:
        print(f"lmlab: note: {notice}", file=sys.stderr)
    rows = [(name, f"{value:.2f}" if name == "bleu" else f"{value:.4f}")
            for name, value in evaluation.scores.values.items()]
    if prompted is None:
        source, model = f"the field {args.prediction_field!r}", None
    else:
        source, model = ("the model, chat template" if prompted.chat else "the model, plain-text prompts"), args.model
    print_table(args, [*rows, ("examples", str(evaluation.scores.n)), ("predictions from", source)], model)
    return 0


def print_table(args: argparse.Namespace, rows: list[tuple[str, str]], model: str | None) -> None:
    """The result as two aligned columns, after a line naming the model (if one ran) and the data."""
    print(f"{'model ' + model + ', ' if model else ''}data {args.data}")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")
