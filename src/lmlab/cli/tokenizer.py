"""`lmlab tokenizer train | encode | info`: train a byte-level BPE, see how a text becomes tokens,
and summarise a tokenizer. A thin shell over `lmlab.tokenizers`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmlab import tokenizers
from lmlab.cli.options import field_default
from lmlab.hub.resolve import resolve_tokenizer
from lmlab.io import claim_folder

TOKENIZER_HELP = ("a model name (smollm2-135m-instruct, minilm-l6, a checkpoint folder, a hub id) or a tokenizer: "
                  "a folder (tokenizer.json, or one .gguf file), a tokenizer.json file, or a .gguf file")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tokenizer",
        help="train, run and inspect tokenizers (BPE, WordPiece, Unigram, GGUF)",
        description="A tokenizer cuts text into tokens, the units a language model reads and writes, "
        "and maps each token to an integer id, its row in the model's embedding table.",
    )
    parser.set_defaults(func=lambda _args: parser.print_help())
    commands = parser.add_subparsers(title="tokenizer commands", metavar="<tokenizer command>")

    train = commands.add_parser(
        "train",
        help="learn a byte-level BPE vocabulary from text files",
        description="Byte-pair encoding (Sennrich et al. 2016) as GPT-2 runs it on bytes: start from the "
        "256 byte values and repeatedly merge the most frequent adjacent pair into a new token, until the "
        "vocabulary has --vocab-size tokens. Frequent words end up as one token, rare ones as several.",
    )
    train.add_argument("--data", type=Path, nargs="+", required=True, metavar="FILE",
                       help="UTF-8 text files to learn the merges from")
    train.add_argument("--vocab-size", type=int, required=True, metavar="N",
                       help="tokens in the final vocabulary: 256 bytes + special tokens + learned merges")
    train.add_argument("--out", type=Path, required=True, metavar="DIR",
                       help="folder to write the tokenizer to (tokenizer.json and its settings)")
    train.add_argument("--special-tokens", nargs="+", default=list(field_default(tokenizers.train_bpe, "special_tokens")),
                       metavar="TOKEN",
                       help="tokens kept whole and never merged, e.g. an end-of-text marker between documents "
                       "(default: %(default)s)")
    train.add_argument("--min-frequency", type=int, default=field_default(tokenizers.train_bpe, "min_frequency"),
                       metavar="N",
                       help="merge only pairs seen at least N times in the data (default: %(default)s)")
    train.set_defaults(func=run_train)

    encode = commands.add_parser(
        "encode",
        help="show how a text is cut into tokens: each token, its id and its bytes",
        description="Encode a text and print one row per token: its position, its id (the row of the "
        "embedding table it selects), how the vocabulary spells it, and the text and bytes it covers. "
        "A byte-level BPE can cut a character between tokens; such a partial character shows as '\ufffd'.",
    )
    encode.add_argument("tokenizer", metavar="TOKENIZER", help=TOKENIZER_HELP)
    encode.add_argument("--text", required=True, help="the text to encode")
    encode.add_argument("--special", action="store_true",
                        help="add the special tokens the model expects around a text (e.g. BOS, or [CLS] ... [SEP])")
    encode.add_argument("--chat", action="store_true",
                        help="first wrap the text as a user message with the tokenizer's chat template")
    encode.set_defaults(func=run_encode)

    info = commands.add_parser(
        "info",
        help="summarise a tokenizer: algorithm, vocabulary size, special tokens, chat template",
        description="Print what kind of tokenizer this is, how many tokens its vocabulary holds, which "
        "tokens play special roles (beginning/end of sequence, padding, unknown, ...), and whether it "
        "carries a chat template.",
    )
    info.add_argument("tokenizer", metavar="TOKENIZER", help=TOKENIZER_HELP)
    info.set_defaults(func=run_info)


def run_train(args: argparse.Namespace) -> None:
    claim_folder(args.out, tokenizers.TOKENIZER_KIND, overwrite=True)  # before the work, not after
    # The trainer draws its progress bars on a terminal; elsewhere it would only print blank lines.
    show_progress = sys.stderr.isatty()
    tokenizer = tokenizers.train_bpe(args.data, args.vocab_size, args.special_tokens, args.min_frequency, show_progress)
    tokenizers.save_tokenizer_folder(tokenizer, args.out)
    print(f"trained a byte-level BPE of {tokenizer.vocab_size:,} tokens, saved to {args.out}")


def run_encode(args: argparse.Namespace) -> None:
    tokenizer = resolve_tokenizer(args.tokenizer)
    text = tokenizer.apply_chat_template([{"role": "user", "content": args.text}]) if args.chat else args.text
    pieces = tokenizers.explain(tokenizer, text, add_special_tokens=args.special)
    header = ("#", "id", "token", "text", "bytes")
    rows = [
        (str(p.position), str(p.id), repr(p.token), repr(p.text_bytes.decode(errors="replace")), p.text_bytes.hex(" "))
        for p in pieces
    ]
    widths = [max(len(row[k]) for row in [header, *rows]) for k in range(4)]
    for row in [header, *rows]:
        print(f"{row[0]:>{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]:<{widths[3]}}  {row[4]}")
    n_bytes = len(text.encode())
    ratio = f", {n_bytes / len(pieces):.2f} bytes per token" if pieces else ""
    print(f"{len(pieces)} tokens for {n_bytes} bytes of text{ratio}")


def run_info(args: argparse.Namespace) -> None:
    rows = tokenizers.describe(resolve_tokenizer(args.tokenizer))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
