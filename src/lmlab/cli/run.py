"""`lmlab run TASK [MODEL]`: use a model for one of the fifteen tasks. A thin shell over `lmlab.pipeline`."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from lmlab.cli.options import field_default
from lmlab.errors import LmlabError
from lmlab.io import write_jsonl
from lmlab.pipelines.base import Pipeline
from lmlab.records import read_records


def _description() -> str:
    from lmlab.pipelines.registry import TASKS

    lines = [f"  {name:26s} {spec.default_model or '(a fine-tuned head)'}: {spec.method}"
             for name, spec in TASKS.items()]
    return ("Use a model for a task, as transformers' pipeline(TASK): the same answers, key for key, as JSON.\n\n"
            "TASK, the default model and the method it uses:\n" + "\n".join(lines) + """

One input from --text (and --context, --labels, --table, --text-pair as the task needs), or one per record of
--data (.jsonl/.json/.csv records with the task's fields: text; question, context; text, text_pair;
source_sentence, sentences; query, table; messages), or one per line of a .txt file. Results go to --out as
JSONL, one line per input in order (default: printed).

examples:
  lmlab run sentiment-analysis --text "I love this!"
  lmlab run zero-shot-classification --text "The match ended 2-1." --labels sports,politics,cooking
  lmlab run question-answering --text "Where does Anna live?" --context "Anna lives in Berlin."
  lmlab run fill-mask --text "The capital of France is <mask>."
  lmlab run translation --text "The cat sleeps." --tgt-lang de
  lmlab run table-question-answering --text "Which city is larger?" --table cities.csv
  lmlab run sentence-similarity --text "A man eats." --text-pair "A man is eating food." --text-pair "A plane."
  lmlab run ner runs/ner/model --data tweets.txt --out entities.jsonl --aggregation simple
  lmlab run feature-extraction --text "Hello" --pooling mean      # one normalized sentence embedding
""")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help="use a model for a task (the fifteen transformers pipelines)",
                              description=_description(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", metavar="TASK", help="the task (listed above)")
    p.add_argument("model", nargs="?", help="the model (default: the task's default model, above)")
    given = p.add_argument_group("input")
    given.add_argument("--text", help="the input text (the question for question answering, the query for tables, "
                                      "the source sentence for sentence similarity)")
    given.add_argument("--text-pair", action="append", metavar="TEXT",
                       help="the second sentence of a pair (NLI); sentence-similarity: a sentence to compare "
                            "(repeatable)")
    given.add_argument("--context", help="question-answering: the text the answer is in")
    given.add_argument("--labels", help="zero-shot-classification: the candidate labels, comma-separated")
    given.add_argument("--table", metavar="CSV", help="table-question-answering: the table, a CSV file with a header")
    given.add_argument("--data", metavar="FILE", help="many inputs: .jsonl, .json, .csv records or .txt lines")
    given.add_argument("--out", metavar="FILE", help="write the results here as JSONL (default: print them)")
    opts = p.add_argument_group("options")
    opts.add_argument("--top-k", type=int, metavar="K", help="how many labels / tokens / answers to return")
    opts.add_argument("--max-new-tokens", type=int, metavar="N", help="longest written answer (generation tasks)")
    opts.add_argument("--aggregation", choices=("none", "simple", "first", "average", "max"),
                      help="token-classification: how tokens become entities (default: none)")
    opts.add_argument("--pooling", choices=("none", "mean", "cls"),
                      help="feature-extraction: token vectors (none, the default) or one normalized sentence "
                           "embedding (mean, as sentence-transformers; cls)")
    opts.add_argument("--method", choices=("nli", "likelihood"),
                      help="zero-shot-classification: NLI entailment or calibrated label likelihood (default: what "
                           "the model can do)")
    opts.add_argument("--hypothesis-template", metavar="TEXT", help="zero-shot: default 'This example is {}.'")
    opts.add_argument("--multi-label", action="store_true", help="zero-shot (NLI): score each label on its own")
    opts.add_argument("--src-lang", help="translation: source language code (default: en)")
    opts.add_argument("--tgt-lang", help="translation: target language code (default: fr)")
    opts.add_argument("--targets", help="fill-mask: only score these words, comma-separated")
    opts.add_argument("--batch-size", type=int, default=field_default(Pipeline.__init__, "batch_size"), metavar="B",
                      help="inputs per forward pass (default: %(default)s)")
    opts.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                      help="any other pipeline option (VALUE read as JSON when it parses), e.g. --option "
                           "do_sample=true --option temperature=0.7")
    p.set_defaults(func=run)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def options_from(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"batch_size": args.batch_size}
    named = {"top_k": args.top_k, "max_new_tokens": args.max_new_tokens, "aggregation_strategy": args.aggregation,
             "pooling": args.pooling, "method": args.method, "hypothesis_template": args.hypothesis_template,
             "src_lang": args.src_lang, "tgt_lang": args.tgt_lang, "candidate_labels": args.labels,
             "targets": args.targets.split(",") if args.targets else None,
             "multi_label": True if args.multi_label else None}
    options.update({k: v for k, v in named.items() if v is not None})
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LmlabError(f"--option takes KEY=VALUE, not {item!r}")
        options[key.replace("-", "_")] = _value(value)
    return options


def read_table(path: str) -> list[list[str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [row for row in csv.reader(f)]
    except FileNotFoundError:
        raise LmlabError(f"{path}: no such file") from None
    except UnicodeDecodeError as err:
        raise LmlabError(f"{path}: not valid UTF-8 text (byte {err.start})") from None


def one_input(task: str, args: argparse.Namespace) -> Any:
    """The input --text and its companions make for `task`."""
    if args.text is None:
        raise LmlabError("give an input: --text TEXT, or --data FILE for many")
    if task == "question-answering":
        return {"question": args.text, "context": args.context}
    if task == "table-question-answering":
        if args.table is None:
            raise LmlabError("table-question-answering needs a table: --table FILE.csv")
        return {"table": read_table(args.table), "query": args.text}
    if task == "sentence-similarity":
        if not args.text_pair:
            raise LmlabError("sentence-similarity needs sentences to compare with --text: --text-pair TEXT (repeat)")
        return {"source_sentence": args.text, "sentences": args.text_pair}
    if args.text_pair and task in ("text-classification", "sentiment-analysis"):
        return {"text": args.text, "text_pair": args.text_pair[0]}
    if task == "conversational":
        return [{"role": "user", "content": args.text}]
    return args.text


def record_input(task: str, record: dict[str, Any], where: str) -> Any:
    """The pipeline input of one data record."""
    def field(name: str) -> Any:
        if name not in record:
            raise LmlabError(f"{where}: missing field {name!r} for {task}")
        return record[name]

    if task == "question-answering":
        return {"question": field("question"), "context": record.get("context")}
    if task == "table-question-answering":
        return {"table": field("table"), "query": field("query")}
    if task == "sentence-similarity":
        return {"source_sentence": field("source_sentence"), "sentences": field("sentences")}
    if task == "conversational" or (task == "text-generation" and "messages" in record):
        return field("messages")
    if "text_pair" in record:
        return {"text": field("text"), "text_pair": record["text_pair"]}
    return field("text")


def many_inputs(task: str, path: str) -> list[Any]:
    if path.endswith(".txt"):
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise LmlabError(f"{path}: no such file") from None
        return [line for line in lines if line.strip()]
    records = read_records(path)
    return [record_input(task, r, f"{Path(path).name} record {n}") for n, r in enumerate(records, start=1)]


def run(args: argparse.Namespace) -> int:
    from lmlab.pipelines import pipeline
    from lmlab.pipelines.registry import resolve_task

    resolve_task(args.task)  # an unknown task fails before any model loads
    if args.data is not None and args.text is not None:
        raise LmlabError("give --text or --data, not both")
    inputs = many_inputs(args.task, args.data) if args.data else [one_input(args.task, args)]
    if not inputs:
        raise LmlabError(f"{args.data}: no inputs in the file")
    task = pipeline(args.task, args.model, **options_from(args))
    results = [task(item) for item in inputs] if args.data is None else task(inputs)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(Path(args.out), results)
        print(f"{len(results)} result(s) written to {args.out}", file=sys.stderr)
    else:
        for result in results:
            print(json.dumps(result, ensure_ascii=False))
    return 0
