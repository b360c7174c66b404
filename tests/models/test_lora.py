"""LoRA (Hu et al. 2021): parameter counts from the paper's formula, exact equality with the base model at
B = 0, merged vs unmerged logits, adapter save/load, tied heads, and bad targets/ranks."""

from __future__ import annotations

import pytest
import torch

from lmlab.config import get_preset
from lmlab.errors import LmlabError
from lmlab.models import Transformer
from lmlab.models.lora import (LoRALinear, apply_lora, load_adapter, lora_state_dict, merge_lora, parse_targets,
                               save_adapter)


def tiny(name: str, seed: int = 0) -> Transformer:
    return Transformer(get_preset(name)).init_weights(seed=seed).eval()


def inputs(model: Transformer, batch: int = 2, length: int = 7) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, model.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(1))
    if model.config.arch == "encoder-decoder":
        return {"input_ids": ids, "decoder_input_ids": ids[:, :4]}
    return {"input_ids": ids}


def test_trainable_count_is_r_times_din_plus_dout_per_matrix():
    c = get_preset("tiny-llama")
    model = Transformer(c)
    r = 4
    report = apply_lora(model, "q,v", rank=r)
    q_in, q_out = c.d_model, c.n_head * c.d_head
    v_in, v_out = c.d_model, c.n_kv_head * c.d_head
    assert report.n_trainable == c.n_layer * (r * (q_in + q_out) + r * (v_in + v_out))
    assert report.n_total == sum(p.numel() for p in Transformer(c).parameters()) + report.n_trainable
    assert report.share == pytest.approx(report.n_trainable / report.n_total)
    assert len(report.modules) == 2 * c.n_layer
    assert all(isinstance(model.get_submodule(m), LoRALinear) for m in report.modules)


def test_all_linear_covers_every_block_matrix_including_cross_attention():
    c = get_preset("tiny-t5")
    model = Transformer(c)
    r = 2
    report = apply_lora(model, "all-linear", rank=r)
    d, inner = c.d_model, c.n_head * c.d_head
    attention = 4 * r * (d + inner)
    ffn = 2 * r * (d + c.d_ff)  # T5 v1.0: up and down, no gate
    expected = c.n_layer * (attention + ffn) + c.n_decoder_layer * (2 * attention + ffn)
    assert report.n_trainable == expected
    assert not any(m.startswith("head") for m in report.modules)


def test_aliases_and_full_names():
    assert parse_targets("q, v") == ["q_proj", "v_proj"]
    assert parse_targets(["attn.o_proj", "gate"]) == ["attn.o_proj", "ffn.gate"]
    model = tiny("tiny-t5")
    report = apply_lora(model, "attn.q_proj", rank=2)
    assert all(m.endswith(".attn.q_proj") for m in report.modules)  # self-attention only, not cross_attn
    assert len(report.modules) == 4


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-bert", "tiny-t5", "tiny-gpt2"])
def test_zero_b_gives_the_base_outputs_exactly(preset):
    base = tiny(preset)
    adapted = tiny(preset)
    apply_lora(adapted, "all-linear", rank=4, alpha=32, dropout=0.1)
    adapted.eval()
    with torch.no_grad():
        assert torch.equal(adapted(**inputs(adapted)).logits, base(**inputs(base)).logits)


def test_init_follows_the_reference_implementation():
    model = tiny("tiny-llama")
    apply_lora(model, "q", rank=8)
    layer = model.decoder.layers[0].attn.q_proj
    # Kaiming-uniform with a = sqrt(5) (loralib, PEFT): bound = 1 / sqrt(d_in)
    assert layer.lora_A.abs().max() <= 1 / model.config.d_model**0.5
    assert layer.lora_A.std() > 0
    assert torch.count_nonzero(layer.lora_B) == 0
    assert layer.scaling == 16 / 8


def train_a_few_steps(model: Transformer, steps: int = 5) -> None:
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = inputs(model, batch=4, length=12)
    for _ in range(steps):
        logits = model(**batch).logits
        loss = logits.float().pow(2).mean() if logits.dim() == 2 else torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), (batch.get("decoder_input_ids", batch["input_ids"]))[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-t5"])
def test_merged_and_unmerged_logits_agree(preset):
    model = tiny(preset)
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, "all-linear", rank=4, dropout=0.1)
    train_a_few_steps(model)
    for name, value in model.state_dict().items():
        if "lora_" not in name:
            assert torch.equal(value, frozen[name]), f"{name} changed but is frozen"
    with torch.no_grad():
        before = model(**inputs(model)).logits
        assert not torch.allclose(before, tiny(preset)(**inputs(model)).logits)
        merge_lora(model)
        after = model(**inputs(model)).logits
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == set(frozen)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


def test_merged_weight_is_w0_plus_scaled_ba():
    model = tiny("tiny-llama")
    apply_lora(model, "v", rank=2, alpha=6)
    layer = model.decoder.layers[1].attn.v_proj
    with torch.no_grad():
        layer.lora_B.normal_()
    expected = layer.weight + (6 / 2) * layer.lora_B @ layer.lora_A
    merge_lora(model)
    torch.testing.assert_close(model.decoder.layers[1].attn.v_proj.weight, expected)


def test_lora_on_a_tied_head_is_untied_when_merged():
    model = tiny("tiny-llama")
    embedding = model.tok_emb.weight.detach().clone()
    apply_lora(model, "head.proj", rank=4)
    with torch.no_grad():
        model.head.proj.lora_B.normal_(std=0.1)
        before = model(**inputs(model)).logits
        merge_lora(model)
        after = model(**inputs(model)).logits
    assert model.config.tie_embeddings is False
    assert torch.equal(model.tok_emb.weight, embedding)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


def test_keep_a_new_head_trainable():
    c = get_preset("tiny-bert").replace(head="sequence-classification", num_labels=3)
    model = Transformer(c)
    report = apply_lora(model, "q,v", rank=2, trainable=["head"])
    head = sum(p.numel() for p in model.head.parameters())
    lora = c.n_layer * 2 * 2 * (c.d_model + c.d_model)
    assert report.n_trainable == head + lora
    assert set(lora_state_dict(model)) >= {"head.classifier.weight", "head.pooler.weight"}


def test_adapter_round_trip(tmp_path):
    model = tiny("tiny-llama")
    report = apply_lora(model, "q,v,down", rank=4, alpha=8)
    train_a_few_steps(model)
    save_adapter(model, tmp_path / "adapter", "tiny-llama", report)
    fresh = tiny("tiny-llama")
    loaded = load_adapter(fresh, tmp_path / "adapter")
    assert loaded.modules == report.modules and loaded.targets == report.targets
    with torch.no_grad():
        torch.testing.assert_close(fresh(**inputs(fresh)).logits, model(**inputs(model)).logits, atol=0, rtol=0)
    files = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert files == [".lmlab.json", "adapter.json", "adapter.safetensors"]


def test_adapter_refuses_another_base(tmp_path):
    model = tiny("tiny-llama")
    save_adapter(model, tmp_path / "a", "tiny-llama", apply_lora(model, "q", rank=2))
    with pytest.raises(LmlabError, match="another config"):
        load_adapter(tiny("tiny-gpt2"), tmp_path / "a")


def test_bad_targets_and_ranks():
    with pytest.raises(LmlabError, match="'qq' matches no linear layer"):
        apply_lora(tiny("tiny-llama"), "qq", rank=2)
    with pytest.raises(LmlabError, match="did you mean"):
        apply_lora(tiny("tiny-llama"), "attn.q_prj", rank=2)
    with pytest.raises(LmlabError, match="gate"):
        apply_lora(tiny("tiny-gpt2"), "gate", rank=2)  # GPT-2's feed-forward is not gated
    with pytest.raises(LmlabError, match="rank 65 exceeds attn.q_proj's smaller dimension"):
        apply_lora(tiny("tiny-llama"), "q", rank=65)
    with pytest.raises(LmlabError, match="at least 1"):
        apply_lora(tiny("tiny-llama"), "q", rank=0)
    model = tiny("tiny-llama")
    apply_lora(model, "q", rank=2)
    with pytest.raises(LmlabError, match="already has LoRA"):
        apply_lora(model, "v", rank=2)
