"""Parity: tiny random transformers models and lmlab models with the same weights give the same logits."""

from __future__ import annotations

import pytest
import torch

from lmlab.hub.convert import family_of, state_dict_from_hf
from tests.tiny import hf_config, hf_pair

SIZES = {"llama": dict(rope_theta=10000.0), "t5": dict(num_decoder_layers=3)}  # beyond tests/tiny.py's


def _pair(name: str):
    hf_model, ours = hf_pair(name, hf_config(name, **SIZES.get(name, {})), head="mlm" if name == "bert" else None)
    hf_dict = hf_model.config.to_dict()
    missing = {n for n, _ in ours.named_parameters()} - set(
        state_dict_from_hf(hf_model.state_dict(), ours.config, family_of(hf_dict)))
    tied = {"head.proj.weight"} if ours.config.tie_embeddings else set()
    assert missing <= tied
    return hf_model, ours


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 120, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right padding
    mask[2, 5:] = 0
    return ids, mask


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert"])
def test_single_stack_logits_match_transformers(name):
    hf_model, ours = _pair(name)
    ids, mask = _batch()
    with torch.no_grad():
        expected = hf_model(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
    keep = mask.bool()
    assert torch.allclose(got[keep], expected[keep], atol=1e-4), (got[keep] - expected[keep]).abs().max()


@pytest.mark.parametrize("name", ["t5", "flan-t5"])
def test_encoder_decoder_logits_match_transformers(name):
    hf_model, ours = _pair(name)
    ids, mask = _batch()
    dec = torch.randint(3, 120, (3, 7), generator=torch.Generator().manual_seed(2))
    dec_mask = torch.ones_like(dec)
    dec_mask[2, 4:] = 0
    with torch.no_grad():
        expected = hf_model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec,
                            decoder_attention_mask=dec_mask).logits
        got = ours(ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask).logits
    keep = dec_mask.bool()
    assert torch.allclose(got[keep], expected[keep], atol=1e-4), (got[keep] - expected[keep]).abs().max()
