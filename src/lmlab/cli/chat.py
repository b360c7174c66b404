"""`lmlab chat`: talk with an instruction-tuned model in the terminal.

A thin shell over `lmlab.generation.chat.Chat`: read a line, add it to the
conversation (dropping the oldest exchanges if the context window is full),
stream the reply.
"""

from __future__ import annotations

import argparse
import sys

from lmlab.cli.generate import add_model_arguments, add_sampling_arguments, generation_config, load
from lmlab.cli.options import SAMPLING_RULES, check_applies
from lmlab.errors import LmlabError
from lmlab.generation.chat import Chat

COMMANDS = "/reset starts a new conversation, /exit (or Ctrl-D) ends the chat"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "chat", help="chat with an instruction-tuned model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Chat with an instruction-tuned model. Each reply is generated from the whole conversation,\n"
            "written in the model's chat template. When the conversation no longer fits the model's\n"
            "context window (with room for --max-new-tokens), the oldest exchanges are dropped, with a notice.\n\n"
            f"In the chat: {COMMANDS}."
        ),
    )
    add_model_arguments(parser)
    parser.add_argument("--system", metavar="TEXT", help="a system message that sets the assistant's behaviour")
    add_sampling_arguments(parser)
    parser.set_defaults(func=check_applies(parser, SAMPLING_RULES, run_chat))


def run_chat(args: argparse.Namespace) -> int:
    config = generation_config(args)
    loaded = load(args)
    chat = Chat(loaded.model, loaded.tokenizer, config, args.system)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {loaded.reference} ({COMMANDS})", file=sys.stderr)
    while True:
        try:
            text = input("you> " if interactive else "").strip()
        except EOFError:
            return 0
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            chat.turns.clear()
            print("(new conversation)", file=sys.stderr)
            continue
        if not text:
            continue
        try:
            dropped = chat.add_user(text)
        except LmlabError as err:
            print(f"lmlab: error: {err}", file=sys.stderr)
            continue
        if dropped:
            print(f"(dropped the {dropped} oldest messages to stay within the {loaded.model.config.max_seq_len}-token "
                  "context window)", file=sys.stderr)
        print("assistant> " if interactive else "", end="", flush=True)
        for piece in chat.respond():
            print(piece, end="", flush=True)
        print()
