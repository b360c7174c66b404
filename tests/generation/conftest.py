"""Tiny transformers models paired with lmlab copies of their weights, and a tiny lmlab checkpoint with a
BPE tokenizer and a chat template for the CLI tests."""

from __future__ import annotations

import pytest
import torch
import transformers

from lmlab.hub.checkpoint import save_checkpoint
from lmlab.models import Transformer
from lmlab.tokenizers import train_bpe
from tests.tiny import CHAT_SPECIAL_TOKENS, CHATML, hf_config, hf_pair, tiny_decoder

VOCAB = 96
TINY = {  # a context of 128 (tests/tiny.py's sizes otherwise)
    "llama": lambda: hf_config("llama", VOCAB, max_position_embeddings=128),
    "gpt2": lambda: hf_config("gpt2", VOCAB, n_positions=128),
    "t5": lambda: hf_config("t5", VOCAB, decoder_start_token_id=0),
}
# Weights drawn wider than a training init, so that greedy decoding does not repeat one token forever
# and the parity tests compare varied sequences.
WEIGHT_STD = {"llama": 0.3, "gpt2": 0.3, "t5": 1.0}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine the threads wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_pair(name: str) -> tuple[transformers.PreTrainedModel, Transformer]:
    """A random transformers model and the lmlab model holding the same weights (tests choose their own
    end-of-sequence token)."""
    return hf_pair(name, TINY[name](), WEIGHT_STD[name], eos_token_id=None)


def random_prompts(lengths: tuple[int, ...], seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths]


TEXT = """The baker opened the shop at six and lined the window with bread, cakes and a tray of donuts.
A girl asked for a banana muffin; the baker had none, so she took a cinnamon roll instead.
By noon the cakes were gone, and the baker wrote tomorrow's list on the back of a paper bag.
"""


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> tuple:
    """A tiny random Llama-style model with a real BPE tokenizer and a ChatML chat template, saved as an
    lmlab checkpoint folder: (folder, model, tokenizer). Its context window is 64 tokens."""
    folder = tmp_path_factory.mktemp("tiny")
    corpus = folder / "corpus.txt"
    corpus.write_text(TEXT * 5, encoding="utf-8")
    tokenizer = train_bpe([corpus], vocab_size=320, special_tokens=CHAT_SPECIAL_TOKENS, show_progress=False)
    tokenizer.chat_template = CHATML
    config = tiny_decoder(tokenizer.vocab_size, 64, tokenizer.token_to_id("<|im_end|>"))
    model = Transformer(config).init_weights(std=0.3, seed=0).eval()
    with torch.no_grad():  # zero (tied) embeddings give the end tokens a logit of 0, below the top: texts run long
        model.tok_emb.weight[[config.eos_token_id, tokenizer.eos_id]] = 0
    save_checkpoint(model, folder / "model", tokenizer)
    return folder / "model", model, tokenizer
