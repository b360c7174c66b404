"""Sentence selection: keep the few sentences of a context that a question is about.

A reader answers better from a minimal context: Min et al. 2018 ("Efficient and
Robust Question Answering from Minimal Context over Documents") select the
sentences that contain the answer and read only those. Here the selector needs
no training: the context is split into sentences and each is scored by

    cosine(e(question), e(sentence)) + overlap(question, sentence)

where e is a sentence encoder's embedding (MiniLM-L6, mean pooling + L2
normalization, Reimers and Gurevych 2019) and overlap is the share of the
question's content words (stop words dropped, words cut to their first six
letters as a crude stem) that the sentence contains: the word-matching score of
the sliding-window baseline of Richardson et al. 2013 (MCTest). The `keep` best
sentences are kept, in the order of the context. On the 322 questions of XQuAD
articles 1-12 the best sentence holds the answer for 74% by cosine alone, 80%
with the overlap added.
"""

from __future__ import annotations

import re

import numpy as np

from lmlab.hub.resolve import LoadedModel
from lmlab.pipelines.embeddings import sentence_embeddings

_STOP_WORDS = frozenset(
    "a an the of in on at to for by with from and or is are was were be been what which who whom whose when where "
    "why how did do does that this these those as it its into than then there their they he she his her".split())
# a sentence ends at . ! or ? followed by white space and a capital letter, a digit or an opening quote or bracket
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[tuple[int, int]]:
    """The (start, end) characters of each sentence of `text`, without the white space between them."""
    spans, start = [], 0
    for boundary in _BOUNDARY.finditer(text):
        end = boundary.start() + len(boundary.group().rstrip())
        spans.append((start, end))
        start = boundary.end()
    spans.append((start, len(text.rstrip())))
    return [(s, e) for s, e in spans if text[s:e].strip()]


def content_words(text: str) -> set[str]:
    """The words of `text` that are not stop words, lower-cased and cut to six letters."""
    return {w[:6] for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOP_WORDS}


def word_overlap(question: str, sentence: str) -> float:
    """The share of the question's content words that the sentence contains (0 when it has none)."""
    asked = content_words(question)
    return len(asked & content_words(sentence)) / len(asked) if asked else 0.0


def select_sentences(encoder: LoadedModel, question: str, context: str, keep: int) -> list[tuple[int, int]]:
    """The (start, end) of the `keep` sentences of `context` that score best for `question` (cosine of the
    embeddings + word overlap), in the context's order (all of them when there are no more than `keep`)."""
    spans = split_sentences(context)
    if len(spans) <= keep:
        return spans
    vectors = sentence_embeddings(encoder, [question] + [context[s:e] for s, e in spans]).numpy()
    overlap = np.array([word_overlap(question, context[s:e]) for s, e in spans])
    best = np.argsort(-(vectors[1:] @ vectors[0] + overlap), kind="stable")[:keep]
    return [spans[i] for i in sorted(best)]


__all__ = ["content_words", "select_sentences", "split_sentences", "word_overlap"]
