"""`lmlab export`: a model as a Hugging Face folder or a GGUF file for llama.cpp and Ollama, with its card.

A thin shell over `lmlab.hub.export.export_model`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lmlab.cli.options import field_default
from lmlab.hub.export import FORMATS, MODELFILE, export_model
from lmlab.hub.gguf_export import OUTTYPES

EXAMPLES = """\
examples:
  lmlab export runs/lora/model --format gguf --outtype q8_0 --out smollm2-lora-gguf
  lmlab export runs/lora/adapter --format gguf --out smollm2-lora-gguf     # the adapter merged into its base
  lmlab export runs/tiny/model --format hf --out tiny-hf                    # transformers' from_pretrained loads it
  cd smollm2-lora-gguf && ollama create smollm2-lora -f Modelfile && ollama run smollm2-lora
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export a model as a Hugging Face folder or GGUF (llama.cpp, Ollama), with a model card",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description=(
            "Write a model in the format other tools run, with a model card (README.md with the Hugging Face\n"
            "metadata header: licence, base model, data, task, the evaluation results its training measured,\n"
            "training details, intended use, limitations and risks, energy and CO2e).\n\n"
            "gguf: llama.cpp's single-file format, tokenizer and chat template inside, for Llama-style\n"
            "(rotary, RMSNorm, SwiGLU) and GPT-2-style decoders; an Ollama Modelfile is written beside it.\n"
            "Matrices are stored as --outtype; norms and biases stay f32. q8_0 keeps 8 bits per weight and\n"
            "q4_0 4 bits, each block of 32 weights with one f16 scale (rows must be multiples of 32).\n"
            "hf: config.json + model.safetensors + tokenizer files for transformers.\n\n"
            "A LoRA adapter folder is merged into its base model first."
        ),
    )
    parser.add_argument("model", help="checkpoint folder, LoRA adapter folder, embedded model, .gguf file or hub id")
    parser.add_argument("--format", choices=FORMATS, default=field_default(export_model, "format"),
                        help="gguf (llama.cpp, Ollama) or hf (transformers, the Hub) (default %(default)s)")
    parser.add_argument("--outtype", choices=list(OUTTYPES), default=field_default(export_model, "outtype"),
                        help="number format of the weight matrices: f32 (4 bytes), f16 / bf16 (2 bytes), "
                             "q8_0 (8.5 bits), q4_0 (4.5 bits; gguf only) (default %(default)s)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help=f"the folder to write (the .gguf, {MODELFILE} and README.md; refused if it exists, "
                             "unless --overwrite)")
    parser.add_argument("--name", help="the model's name in the file and card (default: the --out folder's name)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    path = export_model(args.model, args.out, args.format, args.outtype, args.overwrite, args.name, progress=True)
    print(f"wrote {path}" + (f" and {args.out / MODELFILE}" if args.format == "gguf" else "")
          + f", with a model card in {args.out / 'README.md'}")
    return 0
