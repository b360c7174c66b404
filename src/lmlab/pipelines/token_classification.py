"""Token classification (NER): a label per token, grouped into entities with character offsets.

The model (`lmlab finetune MODEL --task token-classification`, BIO tags as in
CoNLL-2003, Tjong Kim Sang and De Meulder 2003) gives each token a softmax over
the tags. Aggregation strategies, as transformers' pipeline defines them:

- none: every token that is not "O", with its tag, score, index and offsets;
- simple: adjacent tokens joined into entity groups (a B- tag starts a new one;
  the group's score is the mean of its tokens');
- first / average / max: first the sub-word tokens of each word agree on one tag
  (the first token's, the mean distribution's, or the most confident token's),
  then words are grouped as in simple.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmlab.errors import LmlabError
from lmlab.hub.resolve import LoadedModel
from lmlab.pipelines.base import Pipeline, encode, require_head
from lmlab.pipelines.classification import head_labels, softmax

STRATEGIES = ("none", "simple", "first", "average", "max")


def split_tag(tag: str) -> tuple[str, str]:
    """("B" | "I", entity type) of a BIO tag; a tag without a prefix counts as inside."""
    if tag.startswith(("B-", "I-")):
        return tag[0], tag[2:]
    return "I", tag


class TokenClassificationPipeline(Pipeline):
    """A list of entities per text: `{"entity", "score", "index", "word", "start", "end"}` (none) or
    `{"entity_group", "score", "word", "start", "end"}` (simple, first, average, max)."""

    task = "token-classification"

    def __init__(self, loaded: LoadedModel, aggregation_strategy: str = "none", ignore_labels: tuple[str, ...] = ("O",),
                 **kwargs: Any) -> None:
        require_head(loaded, "token-classification", self.task, "token-classification")
        super().__init__(loaded, **kwargs)
        if aggregation_strategy not in STRATEGIES:
            raise LmlabError(f"aggregation strategy must be one of {', '.join(STRATEGIES)}, not "
                             f"{aggregation_strategy!r}")
        self.strategy, self.ignore = aggregation_strategy, set(ignore_labels)
        self.labels = head_labels(loaded)
        backend = self.tokenizer.backend
        self.has_subword_prefix = bool(getattr(backend.model, "continuing_subword_prefix", None))

    def describe(self) -> str:
        return f"{self.loaded.reference}, token-classification head, aggregation {self.strategy}"

    def _string(self, tokens: list[str]) -> str:
        """Tokens back to text, as transformers' convert_tokens_to_string (the tokenizer's decoder)."""
        decoder = self.tokenizer.backend.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    def _pre_entities(self, text: str, encoding: Any, scores: np.ndarray) -> list[dict[str, Any]]:
        out = []
        unk = self.tokenizer.unk_id
        for idx, token_scores in enumerate(scores):
            if encoding.special_tokens_mask[idx]:
                continue
            token_id = encoding.ids[idx]
            word = self.tokenizer.id_to_token(token_id)
            start, end = encoding.offsets[idx]
            word_ref = text[start:end]
            if self.has_subword_prefix:
                is_subword = len(word) != len(word_ref)
            else:
                is_subword = start > 0 and " " not in text[start - 1:start + 1]
            if token_id == unk:
                word, is_subword = word_ref, False
            out.append({"word": word, "scores": token_scores, "start": start, "end": end, "index": idx,
                        "is_subword": is_subword})
        return out

    def _aggregate_word(self, tokens: list[dict[str, Any]]) -> dict[str, Any]:
        if self.strategy == "first":
            scores = tokens[0]["scores"]
        elif self.strategy == "max":
            scores = max(tokens, key=lambda t: t["scores"].max())["scores"]
        else:
            scores = np.nanmean(np.stack([t["scores"] for t in tokens]), axis=0)
        best = int(scores.argmax())
        return {"entity": self.labels[best], "score": scores[best], "word": self._string([t["word"] for t in tokens]),
                "start": tokens[0]["start"], "end": tokens[-1]["end"]}

    def _words(self, pre: list[dict[str, Any]]) -> list[dict[str, Any]]:
        words, group = [], []
        for token in pre:
            if group and not token["is_subword"]:
                words.append(self._aggregate_word(group))
                group = []
            group.append(token)
        if group:
            words.append(self._aggregate_word(group))
        return words

    def _group(self, tokens: list[dict[str, Any]]) -> dict[str, Any]:
        return {"entity_group": split_tag(tokens[0]["entity"])[1],
                "score": float(np.mean(np.nanmean([t["score"] for t in tokens]))),
                "word": self._string([t["word"] for t in tokens]), "start": tokens[0]["start"],
                "end": tokens[-1]["end"]}

    def _groups(self, entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
        groups, current = [], []
        for entity in entities:
            bi, tag = split_tag(entity["entity"])
            if current and not (tag == split_tag(current[-1]["entity"])[1] and bi != "B"):
                groups.append(self._group(current))
                current = []
            current.append(entity)
        if current:
            groups.append(self._group(current))
        return groups

    def entities(self, text: str, encoding: Any, logits: np.ndarray) -> list[dict[str, Any]]:
        pre = self._pre_entities(text, encoding, softmax(logits))
        if self.strategy in ("none", "simple"):
            tokens = []
            for p in pre:
                best = int(p["scores"].argmax())
                tokens.append({"entity": self.labels[best], "score": p["scores"][best], "index": p["index"],
                               "word": p["word"], "start": p["start"], "end": p["end"]})
        else:
            tokens = self._words(pre)
        found = tokens if self.strategy == "none" else self._groups(tokens)
        kept = [e for e in found if e.get("entity", e.get("entity_group")) not in self.ignore]
        for e in kept:
            e["score"] = float(e["score"])
        return kept

    def predict(self, items: list[str], **_: Any) -> list[list[dict[str, Any]]]:
        batch = encode(self.loaded, items)
        logits = self.model(**batch.model_inputs()).logits.float().numpy()
        return [self.entities(text, encoding, logits[row, :len(encoding.ids)])
                for row, (text, encoding) in enumerate(zip(items, batch.encodings))]


__all__ = ["STRATEGIES", "TokenClassificationPipeline", "split_tag"]
