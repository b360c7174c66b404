"""The padding token, one rule for every stage (generation, fine-tuning, pipelines, the embedding server): the
model's pad token, else the tokenizer's, else the smallest end-of-sequence id, else 0; never an id outside the
model's vocabulary (the embedding table would fail on it)."""

from types import SimpleNamespace

import pytest

from lmlab.generation.incremental import padding_id


def model(pad=None, eos=None, vocab=100):
    return SimpleNamespace(config=SimpleNamespace(pad_token_id=pad, eos_token_id=eos, vocab_size=vocab))


def tokenizer(pad=None, eos=None):
    return SimpleNamespace(pad_id=pad, eos_id=eos)


@pytest.mark.parametrize("lm, tok, expected", [
    (model(pad=5), tokenizer(pad=7), 5),  # the model's own pad token first
    (model(), tokenizer(pad=7), 7),
    (model(eos=3), tokenizer(eos=2), 2),  # no pad token: the smaller end-of-sequence id
    (model(pad=200, eos=3), tokenizer(pad=150), 3),  # ids outside the vocabulary are passed over
    (model(), tokenizer(), 0),
    (model(eos=9), None, 9),  # no tokenizer
])
def test_padding_id_rule(lm, tok, expected):
    assert padding_id(lm, tok) == expected
