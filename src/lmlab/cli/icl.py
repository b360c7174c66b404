"""`lmlab icl`: the in-context-learning lab - zero-, one- and few-shot prompts scored with ROUGE.

A thin shell over `lmlab.icl.run_icl` and `lmlab.icl.write_report`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm.auto import tqdm

from lmlab.cli.generate import add_model_arguments, add_sampling_arguments, load, unescape
from lmlab.cli.options import GREEDY, Applies, check_applies
from lmlab.errors import LmlabError
from lmlab.evaluation.harness import PromptedModel
from lmlab.generation import GenerationConfig
from lmlab.icl import SAMPLING_PARAMETERS, SWEEPABLE, IclConfig, check_report_folder, load_records, parse_shots, parse_sweep, run_icl, write_report
from lmlab.prompting import DIALOGUE_TEMPLATE, PromptTemplate
from lmlab.resources import resource_path

# The prompt that got the embedded SmolLM2-135M-Instruct closest to the course's zero-shot figure on
# DialogSum (benchmarks/icl_dialogsum.py): the instruction in the user turn, before the dialogue, one line.
DEFAULT_TEMPLATE = "Summarize the following conversation.\n\n{dialogue}"
DEFAULT_STOP = "\n"
ICL = IclConfig()  # the lab's defaults, written once (in the dataclasses)

EXAMPLES = """\
examples:
  lmlab icl                                   # embedded SmolLM2 on the shipped dialogues, 0/1/2 shots
  lmlab icl --data dialogsum.dev.jsonl --id-field fname --n 100 --shots 0,1,3 --out dialogsum_report
  lmlab icl --sweep temperature=0.2,0.8,1.5 --shots 0,1
  lmlab icl --template "Dialogue:\\n\\n{dialogue}\\n\\nWhat was going on?\\n" --stop ""   # the course's prompt
  lmlab icl --no-chat --template "Dialogue:\\n\\n{dialogue}\\n\\nWhat was going on?\\n" --stop "\\n\\n"
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "icl", help="the in-context-learning lab: zero/one/few-shot prompts scored with ROUGE",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description=(
            "In-context learning: show the model the task in the prompt instead of training it.\n"
            "Zero-shot gives the instruction and the input, one-shot adds one solved example, few-shot\n"
            "several. For each shot count (and each value of --sweep) the model answers the first --n\n"
            "records of --data, and each answer is compared with the reference(s) using ROUGE-1/2/L/Lsum\n"
            "(n-gram and longest-common-subsequence overlap, 0 to 1). The examples come from the records\n"
            "after the first --n, never the query itself.\n\n"
            "With no options it runs the embedded SmolLM2-135M-Instruct on 40 dialogues shipped with\n"
            "lmlab (--n 10, shots 0,1,2, greedy, answers of one line and at most 50 tokens; --stop ''\n"
            "lets an answer run past its line): a few minutes on 2 CPU cores.\n"
            "It prints a table (one row per shot count and setting) and writes to --out:\n"
            "  predictions.jsonl  one line per example and setting: the prompt's size, the answer,\n"
            "                     the references and the answer's ROUGE\n"
            "  summary.json       the table and every option of the run\n"
            "  rouge.png          ROUGE by shot count (and setting)"
        ),
    )
    add_model_arguments(parser)
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, metavar="FILE",
                      help="records to summarize: .jsonl, .json or .csv (default: the 40 dialogues shipped with "
                           "lmlab, in the DialogSum format)")
    data.add_argument("--input-field", default=ICL.template.input_field, metavar="NAME",
                      help="the field holding the text to work on (default: %(default)s)")
    data.add_argument("--target-field", action="append", metavar="NAME",
                      help="the field holding the reference answer; repeat it for several references, of which "
                           f"the best-matching one counts (default: {', '.join(ICL.target_fields)})")
    data.add_argument("--id-field", default=ICL.id_field, metavar="NAME",
                      help="the field naming each record in predictions.jsonl; records without it are numbered "
                           "(default: %(default)s; DialogSum files use fname)")
    data.add_argument("--n", type=int, default=ICL.n, metavar="N",
                      help="answer the first N records (default: %(default)s)")
    prompt = parser.add_argument_group("prompt")
    prompt.add_argument("--instruction", default=ICL.template.instruction, metavar="TEXT",
                        help="text written once before the examples and the query (the system message with "
                             "--chat) (default: none)")
    prompt.add_argument("--template", metavar="TEXT",
                        help="how a record becomes a prompt (the query, and each example before its answer): a "
                             "format string with {field} names, \\n for a new line (default: "
                             f"'{DEFAULT_TEMPLATE.replace(chr(10), chr(92) + 'n')}' with --input-field; the "
                             f"course's is '{DIALOGUE_TEMPLATE.replace(chr(10), chr(92) + 'n')}')")
    prompt.add_argument("--shots", default=",".join(map(str, ICL.shots)), metavar="K,K,...",
                        help="numbers of solved examples to put before the query, one run each (default: %(default)s)")
    prompt.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                        help="render the prompt with the model's chat template: instruction as system message, "
                             "each example as a user turn and an assistant turn (default: on when the model has "
                             "a chat template)")
    prompt.add_argument("--seed", type=int, default=ICL.seed, metavar="N",
                        help="seed of the choice of examples and of sampling (default: %(default)s)")
    inference = add_sampling_arguments(parser, search=False)
    parser.set_defaults(max_new_tokens=ICL.generation.max_new_tokens, stop=None)  # summaries of one line (about 25 tokens in DialogSum)
    inference.add_argument("--sweep", metavar="PARAM=V,V,...",
                           help="compare inference settings: one run per value of PARAM, one of "
                                f"{', '.join(SWEEPABLE)}; sweeping temperature, top_k or top_p turns sampling "
                                "on (e.g. temperature=0.2,0.8,1.5)")
    inference.add_argument("--batch-size", type=int, default=ICL.batch_size, metavar="B",
                           help="prompts generated together, left-padded to the same length (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("runs/icl"), metavar="DIR",
                        help="folder for predictions.jsonl, summary.json and rouge.png; it must be new, empty or "
                             "hold an earlier report, which is replaced (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=check_applies(parser, RULES, run))


def _swept(args: argparse.Namespace) -> str | None:
    return parse_sweep(args.sweep)[0] if args.sweep else None


def _sampling(args: argparse.Namespace) -> bool:
    return args.do_sample or _swept(args) in SAMPLING_PARAMETERS


RULES = (
    *(Applies(option, _sampling, GREEDY.replace("--do-sample,", "--do-sample (or --sweep it),"))
      for option in ("--temperature", "--top-k", "--top-p")),
    *(Applies(f"--{name.replace('_', '-')}", lambda a, name=name: _swept(a) != name,
              f"is replaced by the values of --sweep {name}=...: drop one of them") for name in SWEEPABLE),
)


def icl_config(args: argparse.Namespace) -> IclConfig:
    """Check every option and build the run's configuration (before any model is loaded)."""
    if args.n < 1:
        raise LmlabError(f"--n must be at least 1, got {args.n}")
    template_text = unescape(args.template) if args.template else DEFAULT_TEMPLATE.replace(
        "{dialogue}", "{" + args.input_field + "}")
    template = PromptTemplate(instruction=unescape(args.instruction), input_template=template_text,
                              input_field=args.input_field, target_field=(args.target_field or ICL.target_fields)[0])
    generation = GenerationConfig(
        max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
        stop=tuple(unescape(s) for s in ([DEFAULT_STOP] if args.stop is None else args.stop) if s),
    )
    return IclConfig(
        template=template, target_fields=tuple(args.target_field or ICL.target_fields), shots=parse_shots(args.shots),
        n=args.n, seed=args.seed, generation=generation, sweep=parse_sweep(args.sweep) if args.sweep else None,
        batch_size=args.batch_size, id_field=args.id_field,
    )


def run(args: argparse.Namespace) -> int:
    config = icl_config(args)
    if config.batch_size < 1:
        raise LmlabError(f"--batch-size must be at least 1, got {config.batch_size}")
    check_report_folder(args.out)
    data = args.data or resource_path("dialogues.jsonl")
    records = load_records(data, config.template, config.target_fields)
    if max(config.shots) >= len(records):
        raise LmlabError(f"{max(config.shots)} shots need at least {max(config.shots) + 1} records; "
                         f"{data} has {len(records)}")
    loaded = load(args)
    prompted = PromptedModel.create(loaded.model, loaded.tokenizer, args.chat)
    report = run_icl(prompted, records, config, progress=not args.no_progress,
                     notify=lambda line: tqdm.write(f"lmlab: note: {line}", file=sys.stderr))
    print(report.table())
    n = min(config.n, len(records))
    info = {
        "model": args.model, "data": str(data), "n": n, "shots": list(config.shots), "seed": config.seed,
        "instruction": config.template.instruction, "template": config.template.input_template,
        "target_fields": list(config.target_fields), "sweep": args.sweep,
    }
    out = write_report(report, args.out, info)
    print(f"{n} records x {len(report.rows)} runs in {report.seconds:.0f} s; "
          f"prompt: {'chat template' if report.chat else 'plain text'}; report in {out}/")
    return 0
