"""Tiny BERT task models (tests/tiny.py) for the pipeline tests."""

from __future__ import annotations

import pytest

from tests.tiny import NER_TAGS, NLI_LABELS, tiny_bert


@pytest.fixture(scope="session")
def ner_model(tmp_path_factory, minilm_dir):
    return tiny_bert(tmp_path_factory.mktemp("ner"), minilm_dir, "token-classification", NER_TAGS)


@pytest.fixture(scope="session")
def nli_model(tmp_path_factory, minilm_dir):
    return tiny_bert(tmp_path_factory.mktemp("nli"), minilm_dir, "sequence-classification", NLI_LABELS)


@pytest.fixture(scope="session")
def qa_model(tmp_path_factory, minilm_dir):
    return tiny_bert(tmp_path_factory.mktemp("qa"), minilm_dir, "question-answering")


@pytest.fixture(scope="session")
def mlm_model(tmp_path_factory, minilm_dir):
    return tiny_bert(tmp_path_factory.mktemp("mlm"), minilm_dir, "mlm")
