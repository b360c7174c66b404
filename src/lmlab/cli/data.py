"""`lmlab data prepare|inspect|mix`: turn raw text into packed token shards, look at them, plan a domain mixture."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmlab.cli.options import field_default
from lmlab.data.cleaning import QualityRules
from lmlab.data.corpus import default_documents
from lmlab.data.mixture import load_mixture, parse_mix
from lmlab.data.packing import MANIFEST, load_prepared
from lmlab.data.pipeline import PrepareSettings, format_funnel, prepare, prepare_documents
from lmlab.data.readers import TXT_SPLITS
from lmlab.resources import write_examples

PREPARE_HELP = """\
Prepare a pre-training corpus: read -> normalize -> quality-filter -> exact dedup ->
near dedup (MinHash) -> tokenize -> pack into fixed-length sequences, written as
memory-mapped token shards with a manifest.json, split into train and validation.
Prints how many documents and tokens each step kept (the data funnel).

Without --input, prepares the corpus lmlab ships (stories, animal facts and sums
written by a seeded grammar), about 1.6 MB of text."""


PREPARE = PrepareSettings()  # the data preparation defaults, written once (in the dataclasses)


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="prepare, inspect and mix pre-training data")
    commands = data.add_subparsers(title="data commands", metavar="<data command>")
    data.set_defaults(func=lambda args: data.print_help() or 2)

    p = commands.add_parser(
        "prepare", help="clean, deduplicate, tokenize and pack a corpus", description=PREPARE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--input", nargs="+", metavar="PATH",
                   help=".txt, .jsonl, .json, .csv or .parquet files, or folders of them (default: the shipped corpus)")
    p.add_argument("--tokenizer", required=True, metavar="TOK",
                   help="a tokenizer folder, tokenizer.json or .gguf file; or 'char' for one token per character, "
                        "with the vocabulary taken from the corpus (nanoGPT's shakespeare_char)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder to create; a folder holding a different dataset is never overwritten")
    p.add_argument("--name", help="the dataset's name in a mixture (--mix NAME=WEIGHT); default: the folder's name")
    p.add_argument("--seq-len", type=int, default=PREPARE.seq_len,
                   help="tokens the model reads per sequence (its context); each stored sequence has one more, "
                        "the target of the last position (default: %(default)s)")
    p.add_argument("--val-fraction", type=float, default=PREPARE.val_fraction,
                   help="share of the packed sequences held out for validation, taken from the end of the "
                        "(shuffled) stream (default: %(default)s)")
    p.add_argument("--text-field", default=PREPARE.text_field,
                   help="the field (.jsonl/.json) or column (.csv/.parquet) holding the text (default: %(default)s)")
    p.add_argument("--txt-split", choices=TXT_SPLITS, default=PREPARE.txt_split,
                   help="what a document is in a .txt file: the whole file, or each block between blank lines "
                        "(default: %(default)s)")
    p.add_argument("--min-chars", type=int, default=PREPARE.rules.min_chars,
                   help="drop documents shorter than this many characters (default: %(default)s)")
    p.add_argument("--max-chars", type=int, help="drop documents longer than this many characters (default: no limit)")
    p.add_argument("--max-symbol-ratio", type=float, default=PREPARE.rules.max_symbol_ratio,
                   help="drop documents where more than this share of the visible characters are neither letters nor "
                        "digits: markup, tables, code, junk (default: %(default)s)")
    p.add_argument("--near-dup-threshold", type=float, default=PREPARE.near_dedup_threshold,
                   help="drop a document whose estimated Jaccard similarity of word 5-gram sets with an earlier one "
                        "is at least this (MinHash, 128 hashes, 16 LSH bands) (default: %(default)s)")
    p.add_argument("--no-near-dedup", action="store_true", help="skip near-duplicate removal")
    p.add_argument("--no-exact-dedup", action="store_true", help="keep documents whose text repeats another's exactly")
    p.add_argument("--no-shuffle", action="store_true",
                   help="pack documents in the order read (the validation split is then the end of the corpus)")
    p.add_argument("--seed", type=int, default=PREPARE.seed, help="seed of the document shuffle (default: %(default)s)")
    p.add_argument("--shard-tokens", type=int, default=PREPARE.shard_tokens,
                   help="about how many tokens per shard file (default: 16M)")
    p.set_defaults(func=run_prepare)

    i = commands.add_parser("inspect", help="show a prepared dataset: splits, funnel, a sample")
    i.add_argument("dir", metavar="DIR", help="a folder made by `lmlab data prepare`")
    i.add_argument("--sample-chars", type=int, default=300,
                   help="how much of the first training sequence to show decoded (default: 300)")
    i.set_defaults(func=run_inspect)

    m = commands.add_parser("mix", help="draw a domain mixture of prepared datasets, report realized proportions")
    m.add_argument("dirs", nargs="+", metavar="DIR",
                   help="prepared datasets, each named by its manifest (--name at prepare time)")
    m.add_argument("--mix", required=True, metavar="NAME=W,...",
                   help="sampling weight of each dataset, summing to 1, e.g. finance=0.51,general=0.49 (BloombergGPT)")
    m.add_argument("--samples", type=int, default=10000, help="how many sequences to draw (default: 10000)")
    m.add_argument("--seed", type=int, default=field_default(load_mixture, "seed"),
                   help="seed of the draws (default: %(default)s)")
    m.set_defaults(func=run_mix)

    e = commands.add_parser(
        "examples", help="write the small data files the README's tour uses, from data lmlab ships",
        description="Write, into --out, the data the README's tour reads: dialogues.jsonl (40 dialogues with "
                    "summaries, DialogSum format), train.jsonl and eval.jsonl (30 and 10 of them), reviews.csv "
                    "(text,label), book.txt and corpus/ (documents of lmlab's shipped pre-training corpus, one per file). "
                    "Files that exist are kept.")
    e.add_argument("--out", default="examples", metavar="DIR", help="where to write them (default: %(default)s)")
    e.set_defaults(func=run_examples)


def run_prepare(args: argparse.Namespace) -> int:
    rules = QualityRules(min_chars=args.min_chars, max_chars=args.max_chars, max_symbol_ratio=args.max_symbol_ratio)
    settings = PrepareSettings(
        seq_len=args.seq_len, val_fraction=args.val_fraction, text_field=args.text_field, txt_split=args.txt_split,
        rules=rules, exact_dedup=not args.no_exact_dedup,
        near_dedup_threshold=None if args.no_near_dedup else args.near_dup_threshold,
        shuffle=not args.no_shuffle, seed=args.seed, shard_tokens=args.shard_tokens,
    )
    existed = (Path(args.out) / MANIFEST).is_file()
    if args.input:
        data = prepare(args.input, args.tokenizer, args.out, settings, args.name)
    else:
        data = prepare_documents(default_documents(), args.tokenizer, args.out, settings, args.name,
                                 sources=["lmlab shipped corpus (lmlab.data.corpus.default_documents)"])
    print(format_funnel(data.manifest))
    print(_splits(data.manifest))
    print(f"{'already prepared, unchanged' if existed else 'wrote'}: {data.path} (dataset {data.name!r})")
    return 0


def _splits(manifest: dict) -> str:
    seq_len = manifest["seq_len"]
    return "\n".join(
        f"{split}: {entry['sequences']:,} sequences of {seq_len}+1 tokens in {len(entry['shards'])} shard(s)"
        for split, entry in manifest["splits"].items()
    )


def run_inspect(args: argparse.Namespace) -> int:
    data = load_prepared(args.dir)
    manifest = data.manifest
    tokenizer = data.load_tokenizer()
    print(f"dataset    {data.name!r} at {data.path}")
    print(f"tokenizer  {tokenizer.kind}, vocab {manifest['vocab_size']:,}, eos id {manifest['eos_id']}")
    print(f"tokens     stored as {manifest['dtype']}")
    print(f"sources    {', '.join(manifest['sources'])}")
    print(_splits(manifest))
    print(format_funnel(manifest))
    if len(data.train):
        text = tokenizer.decode(data.train[0].tolist())
        print(f"first training sequence, decoded:\n{text[: args.sample_chars]}")
    return 0


def run_mix(args: argparse.Namespace) -> int:
    mixture = load_mixture(args.dirs, parse_mix(args.mix), args.samples, seed=args.seed)
    print(mixture.report().format())
    return 0


def run_examples(args: argparse.Namespace) -> int:
    written, kept = write_examples(args.out)
    for path in written:
        print(f"wrote {path}")
    for path in kept:
        print(f"kept {path} (it exists)")
    return 0
