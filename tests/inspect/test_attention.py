"""Attention maps: rows are distributions, decoders are causal, and the weights equal transformers'."""

from __future__ import annotations

import torch

from lmlab.cli.main import main
from lmlab.hub.resolve import LoadedModel
from lmlab.inspect.attention import attention_map, format_table, plot
from lmlab.tokenizers import CharTokenizer
from tiny import hf_config, hf_pair


def _tiny_llama():
    return hf_pair("llama", hf_config("llama", 64, hidden_size=32, intermediate_size=48, attn_implementation="eager"))


def test_attention_weights_match_transformers_and_are_causal(tmp_path):
    hf, ours = _tiny_llama()
    tokenizer = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz ")
    loaded = LoadedModel(ours, tokenizer, "tiny", "test")
    amap = attention_map(loaded, "the cat sat", layer=1, head=2)
    ids = torch.tensor([tokenizer.encode("the cat sat")])
    with torch.no_grad():
        expected = hf(ids, output_attentions=True).attentions[1][0, 2]
    assert torch.allclose(amap.weights, expected, atol=1e-5)
    assert torch.allclose(amap.weights.sum(-1), torch.ones(len("the cat sat")))
    assert torch.all(amap.weights.triu(1) == 0)
    assert len(format_table(amap).splitlines()) == len("the cat sat") + 1
    assert plot(amap, tmp_path / "map.png").stat().st_size > 1000


def test_cli_rejects_a_layer_out_of_range(capsys):
    assert main(["inspect", "attention", "minilm-l6", "--text", "hello", "--layer", "9"]) == 1
    assert "layer must be between 0 and 5" in capsys.readouterr().err
