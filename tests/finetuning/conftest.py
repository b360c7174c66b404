"""A tiny Llama-style checkpoint with a real BPE tokenizer and a ChatML chat template, and small data files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmlab.hub.checkpoint import save_checkpoint
from lmlab.models import Transformer
from lmlab.tokenizers import train_bpe
from tests.tiny import CHAT_SPECIAL_TOKENS, CHATML, tiny_decoder

COLOURS = ["red", "green", "blue", "yellow"]
ANIMALS = ["cat", "dog", "bird", "fish"]


def colour_records(n: int) -> list[dict]:
    """'the cat is red' -> 'red': an answer the prompt holds, which a tiny model learns in a few steps."""
    return [{"prompt": f"the {ANIMALS[i % 4]} is {COLOURS[(i // 4) % 4]}. colour?",
             "completion": COLOURS[(i // 4) % 4]} for i in range(n)]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """An lmlab checkpoint folder: a random 2-layer decoder (context 128) with a BPE tokenizer and ChatML."""
    folder = tmp_path_factory.mktemp("tiny-ft")
    corpus = folder / "corpus.txt"
    corpus.write_text(" ".join(r["prompt"] + " " + r["completion"] for r in colour_records(16)) * 20, encoding="utf-8")
    tokenizer = train_bpe([corpus], vocab_size=300, special_tokens=CHAT_SPECIAL_TOKENS, show_progress=False)
    tokenizer.chat_template = CHATML
    config = tiny_decoder(tokenizer.vocab_size, 128, tokenizer.token_to_id("<|im_end|>"))
    model = Transformer(config).init_weights(seed=0).eval()
    save_checkpoint(model, folder / "model", tokenizer)
    return folder / "model"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
