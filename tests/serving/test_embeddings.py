"""POST /v1/embeddings with the embedded all-MiniLM-L6-v2, against sentence-transformers on the same files."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import live_server

SENTENCES = ["A man is playing a guitar.", "The weather is lovely today, isn't it?", "Ein Hund läuft im Park.", ""]


@pytest.fixture(scope="module")
def embedding_server(tiny_model, minilm_dir):
    with live_server(tiny_model, max_model_len=64, embedding_model="minilm-l6") as live:
        yield live


def test_embeddings_equal_sentence_transformers(embedding_server, minilm_dir):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(minilm_dir), device="cpu").encode(SENTENCES)
    client = embedding_server.client()
    for encoding in ({}, {"encoding_format": "float"}):  # by default the client asks for base64 and decodes it
        answer = client.embeddings.create(model="minilm-l6", input=SENTENCES, **encoding)
        ours = np.array([d.embedding for d in answer.data])
        assert [d.index for d in answer.data] == [0, 1, 2, 3]
        assert ours.shape == reference.shape == (4, 384)
        cosine = (ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
        assert (1 - cosine).max() < 1e-5
        assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)


def test_embedding_usage_and_models(embedding_server, tiny_model, minilm_dir):
    from lmlab.hub.resolve import load_model

    tokenizer = load_model("minilm-l6").tokenizer
    answer = embedding_server.client().embeddings.create(model="minilm-l6", input="A man is playing a guitar.")
    assert answer.usage.prompt_tokens == len(tokenizer.encode("A man is playing a guitar.", add_special_tokens=True))
    assert [m.id for m in embedding_server.client().models.list().data] == [str(tiny_model), "minilm-l6"]
