"""`lmlab generate`: continue a prompt with a language model, with every inference parameter.

A thin shell over `lmlab.generation.generate`; `--show-distribution` prints
`lmlab.generation.explain.next_token_table` first.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


from lmlab.cli.options import SAMPLING_RULES, check_applies
from lmlab.errors import LmlabError
from lmlab.generation import GenerationConfig, generate, stream_generate
from lmlab.generation.chat import chat_ids, user_message
from lmlab.generation.explain import next_token_table
from lmlab.hub.resolve import DEFAULT_MODEL, LoadedModel, load_model
from lmlab.quantization.int4 import DEFAULT_GROUP_SIZE, GROUP_SIZES
from lmlab.quantization.weight_format import LOAD_DTYPES

EXAMPLES = """\
examples:
  lmlab generate --prompt "Write a haiku about autumn."
  lmlab generate --prompt "Once upon a time" --no-chat --do-sample --temperature 0.8 --top-p 0.9 --seed 1
  lmlab generate --prompt "The best dessert is" --no-chat --show-distribution --temperature 0.7 --top-k 5
  echo "Summarize: ..." | lmlab generate --stream
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate", help="continue a prompt with a language model",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description=(
            "Continue a prompt token by token. Each step the model scores every vocabulary token;\n"
            "greedy decoding (the default) takes the most probable one, --do-sample draws one at random\n"
            "from the distribution, reshaped by --temperature, --top-k and --top-p.\n\n"
            "Instruction-tuned models (with a chat template, like the default SmolLM2-135M-Instruct)\n"
            "get the prompt as a user message in their chat template; --no-chat sends it as plain text."
        ),
    )
    add_model_arguments(parser)
    source = parser.add_argument_group("prompt (one of; default: read standard input)")
    source.add_argument("--prompt", action="append", metavar="TEXT",
                        help="the text to continue; repeat for several prompts, generated together as a batch")
    source.add_argument("--prompt-file", type=Path, metavar="FILE", help="read the prompt from a UTF-8 text file")
    parser.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                        help="wrap the prompt in the model's chat template as a user message (default: on when "
                             "the model has a chat template, i.e. for instruction-tuned models)")
    parser.add_argument("--system", metavar="TEXT", help="with --chat: a system message put before the prompt")
    add_sampling_arguments(parser)
    parser.add_argument("--stream", action="store_true", help="print each piece of text as soon as it is generated")
    parser.add_argument("--show-distribution", type=int, nargs="?", const=10, metavar="N",
                        help="first print the N (default 10) most probable next tokens and their probability "
                             "before and after the repetition penalty, temperature, top-k and top-p")
    parser.set_defaults(func=check_applies(parser, SAMPLING_RULES, run_generate))


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                        help=f"embedded model, preset, checkpoint folder, .gguf file or hub id (default: {DEFAULT_MODEL})")
    parser.add_argument("--dtype", default="fp32", metavar="|".join(LOAD_DTYPES),
                        help="number format of the weights: fp32 (4 bytes each); bf16 (2 bytes, fp32's range with "
                             "less precision; computes in bf16 too); int8 (1 byte, one scale per output channel) or "
                             "int4 (half a byte, a scale and an offset per --group-size inputs): quantized on load "
                             "and multiplied by PyTorch's low-bit CPU kernels, activations in bf16 (their input). "
                             "Decoding reads every weight once per token, so fewer bytes decode faster (default fp32)")
    parser.add_argument("--group-size", type=int, metavar="G",
                        help=f"with --dtype int4: inputs sharing a scale and an offset, one of "
                             f"{', '.join(map(str, GROUP_SIZES))} (default {DEFAULT_GROUP_SIZE}); smaller is more "
                             "precise and a little bigger. GGUF Q4_0 / Q4_1 weights keep their own groups of 32")


SAMPLING = GenerationConfig()  # the sampling defaults, written once (in the dataclass)


def add_sampling_arguments(parser: argparse.ArgumentParser, search: bool = True) -> argparse._ArgumentGroup:
    """The inference parameters (GenerationConfig's fields), declared once for generate, chat, evaluate and icl;
    `search` adds beam search, the sampler's seed and --truncate (icl has its own seed and no beams)."""
    group = parser.add_argument_group("inference parameters")
    group.add_argument("--max-new-tokens", type=int, default=SAMPLING.max_new_tokens, metavar="N",
                       help="stop after N new tokens (default %(default)s)")
    group.add_argument("--do-sample", action="store_true",
                       help="random sampling: draw each token from the distribution instead of taking the most "
                            "probable one (greedy)")
    group.add_argument("--temperature", type=float, default=SAMPLING.temperature, metavar="T",
                       help="divide the logits by T before the softmax: below 1 the distribution sharpens "
                            "towards the top token, above 1 it flattens; 0 is greedy (default %(default)s)")
    group.add_argument("--top-k", type=int, default=SAMPLING.top_k, metavar="K",
                       help="sample only among the K most probable tokens (default %(default)s: all)")
    group.add_argument("--top-p", type=float, default=SAMPLING.top_p, metavar="P",
                       help="nucleus sampling: sample only among the smallest set of most probable tokens whose "
                            "probabilities sum to at least P, in (0, 1] (default %(default)s: all)")
    group.add_argument("--repetition-penalty", type=float, default=SAMPLING.repetition_penalty, metavar="R",
                       help="make tokens already in the text less likely: their positive logits are divided by R "
                            "and negative ones multiplied (CTRL, Keskar et al. 2019; default %(default)s: none, 1.2 is usual)")
    group.add_argument("--stop", action="append", default=list(SAMPLING.stop), metavar="TEXT",
                       help="end the text where TEXT appears (not included; \\n stands for a new line); repeatable")
    if not search:
        return group
    group.add_argument("--num-beams", type=int, default=SAMPLING.num_beams, metavar="N",
                       help="beam search: keep the N most probable partial texts at each step instead of one, and "
                            "return the best finished one (default %(default)s: no beam search; cannot stream or sample)")
    group.add_argument("--length-penalty", type=float, default=SAMPLING.length_penalty, metavar="L",
                       help="beam search ranks finished texts by log-probability / length**L: above 0 favours "
                            "longer texts (default %(default)s)")
    group.add_argument("--seed", type=int, metavar="N", help="seed of the sampler, for a reproducible draw")
    group.add_argument("--truncate", action="store_true",
                       help="if the prompt does not fit the model's context window, drop its oldest tokens "
                            "instead of stopping with an error")
    return group


def unescape(text: str) -> str:
    """Command-line text with \\n and \\t standing for a new line and a tab."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def generation_config(args: argparse.Namespace) -> GenerationConfig:
    return GenerationConfig(
        max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
        stop=tuple(unescape(s) for s in args.stop),
        seed=args.seed, truncate=args.truncate, num_beams=args.num_beams, length_penalty=args.length_penalty,
    )


def load(args: argparse.Namespace) -> LoadedModel:
    return load_model(args.model, dtype=args.dtype, group_size=args.group_size, fuse=True)


def _read_prompts(args: argparse.Namespace) -> list[str]:
    if args.prompt and args.prompt_file:
        raise LmlabError("give the prompt with --prompt or --prompt-file, not both")
    if args.prompt:
        return args.prompt
    if args.prompt_file:
        try:
            return [args.prompt_file.read_text(encoding="utf-8")]
        except (OSError, UnicodeDecodeError) as err:
            raise LmlabError(f"cannot read the prompt file {args.prompt_file}: "
                             f"{getattr(err, 'strerror', None) or err}") from None
    if sys.stdin.isatty():
        raise LmlabError("no prompt: give one with --prompt TEXT, --prompt-file FILE, or on standard input")
    return [sys.stdin.read()]


def note_window_end(lengths: list[int], config: GenerationConfig, window: int) -> None:
    """A note when texts stopped for length before --max-new-tokens: the context window was full."""
    short = [n for n in lengths if n < config.max_new_tokens]
    if short:
        print(f"lmlab: note: the text ended after {min(short)} new tokens, not --max-new-tokens "
              f"{config.max_new_tokens}: the prompt and the new tokens filled the model's {window}-token context "
              "window", file=sys.stderr)


def run_generate(args: argparse.Namespace) -> int:
    config = generation_config(args)
    texts = _read_prompts(args)
    if args.show_distribution is not None and args.show_distribution < 1:
        raise LmlabError(f"--show-distribution N shows the N most probable tokens: N must be at least 1, not "
                         f"{args.show_distribution}")
    if args.stream and len(texts) > 1:
        raise LmlabError("--stream prints one text as it comes: give a single prompt")
    loaded = load(args)
    tokenizer = loaded.tokenizer
    use_chat = args.chat if args.chat is not None else getattr(tokenizer, "chat_template", None) is not None
    if args.system and not use_chat:
        raise LmlabError("--system needs the chat template (--chat)")
    prompts = [chat_ids(tokenizer, user_message(t, args.system)) for t in texts] if use_chat else texts
    if args.show_distribution:
        table = next_token_table(loaded.model, prompts[0], config, tokenizer, args.show_distribution)
        print(table.format(), end="\n\n")
    start = time.perf_counter()
    window = loaded.model.config.max_seq_len
    if args.stream:
        n_new = 0
        for delta in stream_generate(loaded.model, [prompts[0]], config, tokenizer):
            print(delta.text, end="", flush=True)
            n_new += 1
        print()
        note_window_end([n_new] if delta.finish_reason == "length" else [], config, window)
        return 0
    completions = generate(loaded.model, prompts, config, tokenizer)
    seconds = time.perf_counter() - start
    for i, completion in enumerate(completions):
        if len(completions) > 1:
            print(f"--- prompt {i + 1} ---")
        print(completion.text if tokenizer is not None else " ".join(map(str, completion.tokens)))
    note_window_end([len(c.tokens) for c in completions if c.finish_reason == "length"], config, window)
    n_tokens = sum(len(c.tokens) for c in completions)
    reasons = ", ".join(sorted({c.finish_reason for c in completions}))
    print(f"[{n_tokens} new tokens in {seconds:.1f} s ({n_tokens / seconds:.1f} tokens/s), stopped by: {reasons}]",
          file=sys.stderr)
    return 0
