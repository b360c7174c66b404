"""Tiny BERT models with MiniLM's real WordPiece tokenizer, saved as lmlab checkpoints and exported to Hugging
Face folders, so lmlab and transformers run the same weights on the same tokens."""

from __future__ import annotations

from pathlib import Path

import torch

from lmlab.config import get_preset
from lmlab.models.heads import attach_head
from lmlab.hub.checkpoint import export_hf, save_checkpoint
from lmlab.models import Transformer
from lmlab.tokenizers import load_tokenizer

NER_TAGS = ["B-location", "B-person", "I-location", "I-person", "O"]
NLI_LABELS = ["contradiction", "entailment", "neutral"]


def tiny_bert(folder: Path, minilm_dir: Path, head: str, labels: list[str] | None = None, seed: int = 0) -> tuple[Path, Path]:
    """(lmlab checkpoint, exported HF folder) of a random 2-layer BERT over MiniLM's vocabulary."""
    config = get_preset("tiny-bert").replace(vocab_size=30522, max_seq_len=512, head="mlm" if head == "mlm" else "none")
    model = Transformer(config).init_weights(std=0.5, seed=seed)
    if head != "mlm":
        attach_head(model, head, labels, seed=seed)
        with torch.no_grad():  # larger head weights, so the scores spread and the answers differ
            for p in model.head.parameters():
                p.normal_(0, 1.0, generator=torch.Generator().manual_seed(seed))
    model.eval()
    tokenizer = load_tokenizer(minilm_dir)
    return (save_checkpoint(model, folder / "lmlab", tokenizer), export_hf(model, folder / "hf", tokenizer))
