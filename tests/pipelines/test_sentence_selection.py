"""Sentence selection for generative QA: the split and the overlap by hand, the choice against
sentence-transformers' cosine."""

from __future__ import annotations

import numpy as np

from lmlab.hub.resolve import load_model
from lmlab.pipelines.sentence_selection import select_sentences, split_sentences, word_overlap

CONTEXT = ('The Amazon flows through Peru and Brazil. It is about 6,400 km long! "Who named it?" asked Ann. '
           "Francisco de Orellana named the river in 1542 (after the Amazons). 2 rivers meet at Manaus.")


def test_split_sentences_by_hand():
    assert [CONTEXT[s:e] for s, e in split_sentences(CONTEXT)] == [
        "The Amazon flows through Peru and Brazil.", "It is about 6,400 km long!", '"Who named it?" asked Ann.',
        "Francisco de Orellana named the river in 1542 (after the Amazons).", "2 rivers meet at Manaus."]
    assert split_sentences("  no full stop here ") == [(0, 19)]
    assert split_sentences("e.g. this stays one sentence.") == [(0, 29)]


def test_word_overlap_by_hand():
    # content words of the question: "river" "named" "orellan" cut to 6 letters: river, named, orella
    assert word_overlap("When was the river named by Orellana?", "Orellana named the Amazon.") == 2 / 3
    assert word_overlap("Who is it?", "anything") == 0.0  # no content word asked


def test_the_sentences_closest_by_sentence_transformers_cosine_and_overlap(minilm_dir):
    from sentence_transformers import SentenceTransformer

    question = "When was the river named?"
    spans = split_sentences(CONTEXT)
    st = SentenceTransformer(str(minilm_dir), device="cpu")
    vectors = st.encode([question] + [CONTEXT[s:e] for s, e in spans], normalize_embeddings=True)
    overlap = np.array([word_overlap(question, CONTEXT[s:e]) for s, e in spans])
    best = sorted(np.argsort(-(vectors[1:] @ vectors[0] + overlap))[:2])
    encoder = load_model(str(minilm_dir))
    assert select_sentences(encoder, question, CONTEXT, 2) == [spans[i] for i in best]
    assert select_sentences(encoder, question, CONTEXT, 9) == spans
