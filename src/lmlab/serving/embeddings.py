"""Sentence embeddings from an encoder, as sentence-transformers computes them.

Sentence-BERT (Reimers & Gurevych 2019) turns a BERT-style encoder into a sentence encoder by
pooling its last hidden states: the mean over the real tokens (padding masked out), then, for
all-MiniLM-L6-v2 and the other cosine-similarity models, division by the L2 norm, so the dot
product of two embeddings is their cosine similarity.
"""

from __future__ import annotations

import threading

import torch

from lmlab.errors import LmlabError
from lmlab.generation.incremental import padding_id
from lmlab.hub.resolve import LoadedModel
from lmlab.models.pooling import mean_pool, normalize

BATCH_SIZE = 32


class SentenceEncoder:
    """Mean-pooled, L2-normalized embeddings of texts (or token ids) from an encoder-only model."""

    def __init__(self, loaded: LoadedModel) -> None:
        c = loaded.model.config
        if c.arch != "encoder":
            raise LmlabError(f"embeddings need an encoder-only model (such as minilm-l6); {loaded.reference!r} is "
                             f"a {c.arch}")
        if loaded.tokenizer is None:
            raise LmlabError(f"the embedding model {loaded.reference!r} has no tokenizer")
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.name = loaded.reference
        self.max_tokens = c.max_seq_len
        self.dimensions = c.d_model
        self._lock = threading.Lock()

    def token_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=True)

    @torch.inference_mode()
    def encode(self, rows: list[list[int]]) -> torch.Tensor:
        """[N, d] unit vectors, one per row of token ids."""
        pad = padding_id(self.model, self.tokenizer)
        out = []
        with self._lock:
            for start in range(0, len(rows), BATCH_SIZE):
                batch = rows[start:start + BATCH_SIZE]
                length = max(len(row) for row in batch)
                ids = torch.full((len(batch), length), pad, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for b, row in enumerate(batch):
                    ids[b, :len(row)] = torch.tensor(row)
                    mask[b, :len(row)] = 1
                hidden = self.model(ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).hidden_states
                out.append(normalize(mean_pool(hidden.float(), mask)))
        return torch.cat(out)
