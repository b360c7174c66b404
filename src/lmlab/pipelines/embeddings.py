"""Feature extraction and sentence similarity: what an encoder's vectors are good for without a head.

- feature-extraction returns, as transformers does, the last hidden state of
  every token ([1, T, d] per text, as nested lists); with `pooling="mean"` it
  returns one sentence embedding per text instead: the mean of the token
  vectors over the real tokens, divided by its L2 norm (Sentence-BERT,
  Reimers and Gurevych 2019; all-MiniLM-L6-v2's own pooling and normalization,
  `lmlab.models.pooling`). `pooling="cls"` takes the first token's vector.
- sentence-similarity embeds a source sentence and candidate sentences that way
  and returns the cosine similarity of each candidate to the source (the
  Hugging Face inference task of that name: {"source_sentence", "sentences"} in,
  a list of floats out).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lmlab.errors import LmlabError
from lmlab.hub.resolve import LoadedModel
from lmlab.models.pooling import mean_pool, normalize
from lmlab.pipelines.base import Pipeline, check_text, encode

POOLINGS = ("none", "mean", "cls")


@torch.inference_mode()
def sentence_embeddings(loaded: LoadedModel, texts: Sequence[str], pooling: str = "mean",
                        normalized: bool = True) -> torch.Tensor:
    """[N, d] sentence embeddings of `texts` in one batch (mean or first-token pooling, then L2 normalization)."""
    batch = encode(loaded, texts)
    hidden = loaded.model(**batch.model_inputs()).hidden_states.float()
    pooled = mean_pool(hidden, batch.attention_mask) if pooling == "mean" else hidden[:, 0]
    return normalize(pooled) if normalized else pooled


class FeatureExtractionPipeline(Pipeline):
    """Per text: [[vector of each token]] (pooling "none"), or one embedding (pooling "mean" or "cls")."""

    task = "feature-extraction"

    def __init__(self, loaded: LoadedModel, pooling: str = "none", normalize: bool | None = None,
                 **kwargs: Any) -> None:
        super().__init__(loaded, **kwargs)
        if pooling not in POOLINGS:
            raise LmlabError(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
        self.pooling = pooling
        self.normalized = (pooling != "none") if normalize is None else normalize

    def describe(self) -> str:
        if self.pooling == "none":
            return f"{self.loaded.reference}, last hidden state of each token"
        return (f"{self.loaded.reference}, {self.pooling} pooling" +
                (" + L2 normalization" if self.normalized else ""))

    def predict(self, items: list[str], **_: Any) -> list[Any]:
        if self.pooling != "none":
            return sentence_embeddings(self.loaded, items, self.pooling, self.normalized).tolist()
        batch = encode(self.loaded, items)
        hidden = self.model(**batch.model_inputs()).hidden_states.float()
        if self.normalized:
            hidden = normalize(hidden)
        return [[hidden[row, :len(e.ids)].tolist()] for row, e in enumerate(batch.encodings)]


class SentenceSimilarityPipeline(Pipeline):
    """Per {"source_sentence", "sentences"}: the cosine similarity of each sentence to the source."""

    task = "sentence-similarity"

    def describe(self) -> str:
        return f"{self.loaded.reference}, cosine of mean-pooled, normalized embeddings"

    def is_single(self, inputs: Any) -> bool:
        return isinstance(inputs, dict)

    def check(self, item: Any) -> tuple[str, list[str]]:
        if not isinstance(item, dict) or "source_sentence" not in item or "sentences" not in item:
            raise LmlabError("sentence similarity takes {'source_sentence': text, 'sentences': [texts]}")
        sentences = item["sentences"]
        if isinstance(sentences, str):
            sentences = [sentences]
        if not sentences:
            raise LmlabError("sentence similarity needs at least one sentence to compare with the source")
        return check_text(item["source_sentence"], "source sentence"), [check_text(s, "sentence") for s in sentences]

    def predict(self, items: list[tuple[str, list[str]]], **_: Any) -> list[list[float]]:
        results = []
        for source, sentences in items:
            vectors = sentence_embeddings(self.loaded, [source, *sentences])
            results.append((vectors[1:] @ vectors[0]).tolist())
        return results


__all__ = ["FeatureExtractionPipeline", "SentenceSimilarityPipeline", "sentence_embeddings"]
