"""A tiny random Llama-style checkpoint with a real BPE tokenizer, for fast end-to-end tests of commands
that take a model (its answers are gibberish, but every step of the pipeline runs for real)."""

from __future__ import annotations

import json
from pathlib import Path

from lmlab.config import get_preset
from lmlab.hub.checkpoint import save_checkpoint
from lmlab.models import Transformer
from lmlab.resources import resource_path
from lmlab.tokenizers import Tokenizer, train_bpe

# A ChatML template, the format of SmolLM2-Instruct's.
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def tiny_tokenizer(folder: Path, chat: bool = False) -> Tokenizer:
    """A 400-token byte-level BPE trained on the shipped dialogues (its corpus is written beside `folder`)."""
    text = folder.parent / f"{folder.name}_corpus.txt"
    records = [json.loads(line) for line in resource_path("dialogues.jsonl").read_text().splitlines()]
    text.write_text("\n".join(r["dialogue"] + "\n" + r["summary"] for r in records), encoding="utf-8")
    tokenizer = train_bpe([text], 400, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], show_progress=False)
    if chat:
        tokenizer.chat_template = CHATML
    return tokenizer


def make_tiny_checkpoint(folder: Path, max_seq_len: int = 2048, chat: bool = False) -> Path:
    """Save a tiny-llama (random weights, seed 0) with a 400-token BPE trained on the shipped dialogues."""
    tokenizer = tiny_tokenizer(folder, chat)
    model = Transformer(get_preset("tiny-llama").replace(max_seq_len=max_seq_len)).init_weights(seed=0).eval()
    return save_checkpoint(model, folder, tokenizer)
