"""Compute planner against GPT-3's published compute and torch's own FLOP counter on real lmlab models."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lmlab.config import get_preset
from lmlab.errors import LmlabError
from lmlab.models.transformer import Transformer
from lmlab.planning.compute import (
    exact_training_flops,
    forward_flops,
    pf_days,
    plan_compute,
    training_flops,
)
from lmlab.planning.params import count_parameters


def test_gpt3_175b_compute_from_the_paper():
    # Brown et al. 2020, Table D.1: 174.6B parameters, 300B tokens, 3.14e23 FLOPs, 3.64e3 PF/s-days.
    flops = training_flops(174.6e9, 300e9)
    assert flops == pytest.approx(3.14e23, rel=0.002)
    assert pf_days(flops) == pytest.approx(3640, rel=0.002)


def test_gpt3_175b_compute_from_the_preset():
    n_params = count_parameters(get_preset("gpt3-175b"))
    assert pf_days(training_flops(n_params, 300e9)) == pytest.approx(3640, rel=0.002)


def test_exact_count_is_close_to_6nd_for_gpt3():
    # Hoffmann et al. 2022, Table A4: the exact count is within a few percent of 6ND for large models.
    config = get_preset("gpt3-175b")
    ratio = exact_training_flops(config, 300e9) / training_flops(count_parameters(config), 300e9)
    assert 1.0 < ratio < 1.05


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama", "tiny-t5", "tiny-bert"])
def test_exact_count_matches_torch_flop_counter(preset):
    # torch counts matrix multiplies (forward and backward) on the real model; it does not count the
    # embedding lookup or the softmax, which appendix F includes, so those are taken out.
    config = get_preset(preset)
    model = Transformer(config)
    batch, seq = 2, 64
    ids = torch.randint(0, config.vocab_size, (batch, seq))
    extra = {"decoder_input_ids": ids} if config.arch == "encoder-decoder" else {}
    with FlopCounterMode(display=False) as counter:
        out = model(ids, output_attentions=True, **extra)
        out.logits.float().logsumexp(-1).sum().backward()
    parts = forward_flops(config, seq)
    attention_blocks = config.n_layer + 2 * config.n_decoder_layer
    not_matmul = parts["embeddings"] + 3 * config.n_head * seq * seq * attention_blocks
    assert exact_training_flops(config, batch * seq, seq) - 3 * batch * not_matmul == counter.get_total_flops()


def test_plan_compute_time_cost_energy():
    # 3.14e23 FLOPs on 1024 V100s at 125 TF/s fp16 and 20% MFU: 25 TF/s each.
    plan = plan_compute(3.14e23, "V100-32GB", "fp16", gpus=1024, mfu=0.2, usd_per_gpu_hour=1.5, pue=1.1)
    hours = 3.14e23 / 25e12 / 3600
    assert plan.gpu_hours == pytest.approx(hours)
    assert plan.days == pytest.approx(hours / 1024 / 24)
    assert plan.cost_usd == pytest.approx(1.5 * hours)
    assert plan.energy_kwh == pytest.approx(hours * 0.300 * 1.1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(accelerator="A1000"), r"unknown accelerator 'A1000' \(did you mean"),
    (dict(accelerator="V100-32GB", dtype="bf16"), "V100-32GB has no bf16 peak rate"),
    (dict(gpus=0), "at least 1"),
    (dict(mfu=1.5), r"MFU .* must be in \(0, 1\]"),
    (dict(mfu=0), r"MFU .* must be in \(0, 1\]"),
    (dict(pue=0.9), "PUE"),
    (dict(usd_per_gpu_hour=-1), "must not be negative"),
])
def test_bad_compute_inputs(kwargs, message):
    with pytest.raises(LmlabError, match=message):
        plan_compute(1e20, **kwargs)


def test_non_positive_sizes():
    with pytest.raises(LmlabError, match="token count must be a positive number"):
        training_flops(1e9, 0)
    with pytest.raises(LmlabError, match="parameter count must be a positive number"):
        training_flops(-1, 1e9)
    with pytest.raises(LmlabError, match="sequence length must be a positive number"):
        exact_training_flops(get_preset("tiny-gpt2"), 1e6, seq_len=0)
