"""`lmlab serve`: an OpenAI-compatible HTTP server with a playground page, over the continuous-batching engine.

A thin shell over `lmlab.serving.serve`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lmlab.cli.generate import add_model_arguments
from lmlab.errors import LmlabError
from lmlab.serving import ServerLimits, ServeSettings, serve

EXAMPLES = """\
examples:
  lmlab serve                                   # SmolLM2-135M-Instruct on http://127.0.0.1:8000 (playground at /)
  lmlab serve --embedding-model minilm-l6 --api-key-file key.txt --slots 16
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi!"}]}'
"""

SETTINGS = ServeSettings()  # the server's defaults, written once (in the dataclasses)
LIMITS = ServerLimits()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API, with a playground page",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description=(
            "Serve a language model over HTTP with OpenAI's API (POST /v1/completions, /v1/chat/completions,\n"
            "/v1/embeddings; GET /v1/models), so OpenAI's client libraries and tools work with it, and a\n"
            "playground page at / (prompt, sliders for the inference parameters, streamed output, token\n"
            "probabilities). Requests are decoded together by a continuous-batching engine: --slots of them\n"
            "at a time, up to --max-queue more waiting, and past that 429 Too Many Requests with Retry-After.\n"
            "GET /health is 503 while the model loads; GET /metrics is in Prometheus' text format.\n"
            "SIGTERM or Ctrl-C finishes the requests in flight, then exits."
        ),
    )
    add_model_arguments(parser)
    parser.add_argument("--host", default=SETTINGS.host,
                        help="address to listen on (default %(default)s: this machine only; 0.0.0.0 opens it to the "
                             "network, so give it an --api-key)")
    parser.add_argument("--port", type=int, default=SETTINGS.port, help="TCP port (default %(default)s)")
    key = parser.add_mutually_exclusive_group()
    key.add_argument("--api-key", metavar="KEY",
                     help="require 'Authorization: Bearer KEY' on every endpoint (the playground page asks for it)")
    key.add_argument("--api-key-file", type=Path, metavar="FILE",
                     help="read the API key from FILE (keeps it out of the process list and shell history)")
    parser.add_argument("--slots", type=int, default=LIMITS.slots, metavar="N",
                        help="requests decoded together, each with its own KV-cache slot (default %(default)s)")
    parser.add_argument("--max-queue", type=int, default=LIMITS.max_queue, metavar="N",
                        help="requests that may wait for a slot; past that, 429 with Retry-After (default %(default)s)")
    parser.add_argument("--max-model-len", type=int, default=SETTINGS.max_model_len, metavar="N",
                        help="tokens of prompt and answer per request, the length of each KV-cache slot "
                             "(default: the model's context window, at most 2048)")
    parser.add_argument("--max-body-bytes", type=int, default=LIMITS.max_body_bytes, metavar="N",
                        help="largest request body accepted; larger ones get 413 (default %(default)s)")
    parser.add_argument("--cors-origin", action="append", default=list(LIMITS.cors_origins), metavar="ORIGIN",
                        help="let web pages from ORIGIN (e.g. http://localhost:3000) call the API from a browser; "
                             "repeatable (default: none, CORS closed)")
    parser.add_argument("--embedding-model", default=SETTINGS.embedding_model, metavar="MODEL",
                        help="an encoder for POST /v1/embeddings, mean-pooled and normalized like "
                             "sentence-transformers (e.g. minilm-l6)")
    parser.add_argument("--shutdown-timeout", type=float, default=LIMITS.shutdown_timeout, metavar="S",
                        help="on SIGTERM, wait up to S seconds for the requests in flight before cancelling them "
                             "(default %(default)s)")
    parser.set_defaults(func=run_serve)


def read_api_key(args: argparse.Namespace) -> str | None:
    if args.api_key_file is None:
        return args.api_key
    try:
        key = args.api_key_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise LmlabError(f"cannot read the API key file {args.api_key_file}: "
                         f"{getattr(err, 'strerror', None) or err}") from None
    if not key:
        raise LmlabError(f"the API key file {args.api_key_file} is empty")
    return key


def run_serve(args: argparse.Namespace) -> int:
    limits = ServerLimits(slots=args.slots, max_queue=args.max_queue, max_body_bytes=args.max_body_bytes,
                          api_key=read_api_key(args), cors_origins=tuple(args.cors_origin),
                          shutdown_timeout=args.shutdown_timeout)
    serve(ServeSettings(model=args.model, host=args.host, port=args.port, dtype=args.dtype,
                        group_size=args.group_size, max_model_len=args.max_model_len,
                        embedding_model=args.embedding_model, limits=limits))
    return 0
