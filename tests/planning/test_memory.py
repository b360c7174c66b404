"""Memory planner against published figures (ZeRO paper, the course, Korthikanti et al.) and the real KV cache."""

import pytest
import torch

from lmlab.config import get_preset
from lmlab.errors import LmlabError
from lmlab.models.transformer import Transformer
from lmlab.planning.memory import RULES_OF_THUMB, Parallelism, activation_term, plan_inference_memory, plan_training_memory
from lmlab.planning.params import count_parameters

GB = 1e9


@pytest.mark.parametrize("stage, published_gb", [(0, 120), (1, 31.4), (2, 16.6), (3, 1.9)])
def test_zero_paper_7_5b_on_64_devices(stage, published_gb):
    # Rajbhandari et al. 2020, Figure 1: Ψ = 7.5B, N_d = 64, K = 12 (mixed-precision Adam).
    plan = plan_training_memory(7.5e9, "fp16", "adam", mixed_precision=True,
                                parallelism=Parallelism(gpus=64, zero=stage))
    assert plan.model_states_bytes / GB == pytest.approx(published_gb, abs=0.05)
    assert plan.bytes_per_param == 16


def test_course_1b_weights_per_format():
    assert plan_inference_memory(1e9, "fp32").total_bytes == 4 * GB
    assert plan_inference_memory(1e9, "fp16").total_bytes == 2 * GB
    assert plan_inference_memory(1e9, "bf16").total_bytes == 2 * GB
    assert plan_inference_memory(1e9, "int8").total_bytes == 1 * GB
    assert plan_inference_memory(1e9, "int4").total_bytes == 0.5 * GB


def test_course_1b_training_items_and_rules_of_thumb():
    # The course: 4 B weights + 8 B Adam states + 4 B gradients + ~8 B activations = 24 GB for 1B params,
    # and "~20x the weights" = 80 GB; ZeRO-style mixed-precision Adam: 16 B/param.
    plan = plan_training_memory(1e9, "fp32", "adam")
    assert (plan.weights.bytes, plan.optimizer_states.bytes, plan.gradients.bytes) == (4 * GB, 8 * GB, 4 * GB)
    rules = {rule.bytes_per_param: rule.bytes_for(1e9) for rule in RULES_OF_THUMB}
    assert rules == {24.0: 24 * GB, 80.0: 80 * GB, 16.0: 16 * GB}
    mixed = plan_training_memory(1e9, "bf16", "adamw", mixed_precision=True)
    assert mixed.model_states_bytes == 16 * GB


def test_optimizer_states_per_optimizer():
    states = {opt: plan_training_memory(1e9, "fp32", opt).optimizer_states.bytes / 1e9
              for opt in ("adam", "adamw", "sgd", "adafactor")}
    assert states == {"adam": 8, "adamw": 8, "sgd": 4, "adafactor": 0}
    assert plan_training_memory(1e9, "bf16", "sgd", mixed_precision=True).optimizer_states.bytes == 8 * GB


def test_hybrid_sharding_and_cpu_offload():
    full = plan_training_memory(8e9, "bf16", "adam", True, Parallelism(gpus=64, zero=3))
    hybrid = plan_training_memory(8e9, "bf16", "adam", True, Parallelism(gpus=64, zero=3, sharding_factor=8))
    assert full.model_states_bytes == 16 * 8e9 / 64
    assert hybrid.model_states_bytes == 16 * 8e9 / 8
    offload2 = plan_training_memory(8e9, "bf16", "adam", True, Parallelism(gpus=8, zero=2, offload="cpu"))
    assert offload2.optimizer_states.bytes == 0
    assert offload2.host.bytes == 12 * 8e9 / 8
    assert offload2.weights.bytes == 2 * 8e9
    offload3 = plan_training_memory(8e9, "bf16", "adam", True, Parallelism(gpus=8, zero=3, offload="cpu"))
    assert offload3.weights.bytes == 0 and offload3.host.bytes == (12 + 2) * 8e9 / 8
    assert offload3.model_states_bytes == 2 * 8e9 / 8


def test_korthikanti_per_layer_formula():
    # Korthikanti et al. 2022, eq. 1: s·b·h·(34 + 5·a·s/h) bytes per layer at 16 bits, with dropout, d_ff = 4h.
    # GPT-3 175B's shape; logits and embedding terms (section 4.3) are 5sbh + 4sbv.
    config = get_preset("gpt3-175b").replace(dropout=0.1)
    s, b, h, a, v, n_layer = 2048, 1, 12288, 96, 50257, 96
    term = activation_term(config, batch=b, seq_len=s, bytes_per_element=2)
    assert term.bytes == n_layer * s * b * h * (34 + 5 * a * s / h) + 5 * s * b * h + 4 * s * b * v
    # Full recomputation keeps 2sbh per layer (their Table 2), plus one layer while it is recomputed.
    ckpt = activation_term(config, batch=b, seq_len=s, bytes_per_element=2, checkpointing=True)
    assert ckpt.bytes == n_layer * 2 * s * b * h + s * b * h * (34 + 5 * a * s / h) + 5 * s * b * h + 4 * s * b * v


def test_activations_scale_with_batch_and_fp32_doubles_the_16_bit_elements():
    config = get_preset("gpt2")
    one = activation_term(config, 1, 1024, 2).bytes
    assert activation_term(config, 4, 1024, 2).bytes == pytest.approx(4 * one)
    logits = 4 * 1024 * config.vocab_size
    assert activation_term(config, 1, 1024, 4).bytes - logits == pytest.approx(2 * (one - logits))


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama", "smollm2-135m"])
def test_kv_cache_matches_the_models_own_cache(preset):
    config = get_preset(preset)
    model = Transformer(config)
    cache = model.new_cache(batch_size=3, max_len=100)
    allocated = sum(t.numel() * t.element_size() for t in cache.keys + cache.values)
    plan = plan_inference_memory(count_parameters(config), "fp32", config, batch=3, seq_len=100)
    assert plan.kv_cache.bytes == allocated


def test_kv_cache_of_an_encoder_decoder_counts_cross_attention():
    config = get_preset("tiny-t5")
    model = Transformer(config).eval()
    cache = model.new_cache(batch_size=2, max_len=16)
    ids = torch.randint(0, config.vocab_size, (2, 16))
    with torch.no_grad():
        model(ids, decoder_input_ids=ids, cache=cache)
    tensors = cache.keys + cache.values + [t for pair in cache.cross for t in pair]
    plan = plan_inference_memory(count_parameters(config), "fp32", config, batch=2, seq_len=16)
    assert plan.kv_cache.bytes == sum(t.numel() * t.element_size() for t in tensors)


def test_weights_match_a_real_models_parameter_bytes():
    config = get_preset("tiny-llama")
    model = Transformer(config).to(torch.bfloat16)
    real = sum(p.numel() * p.element_size() for p in model.parameters())
    assert plan_inference_memory(count_parameters(config), "bf16").weights.bytes == real


def test_encoder_has_no_kv_cache_and_int8_serving_keeps_a_16_bit_cache():
    assert plan_inference_memory(1e8, "fp16", get_preset("bert-base")).kv_cache is None
    plan = plan_inference_memory(1e8, "int8", get_preset("gpt2"), batch=1, seq_len=1024)
    assert plan.kv_cache.name == "KV cache (fp16)"


def test_fits_on_lists_accelerators_with_enough_memory():
    fits = [a.name for a in plan_training_memory(7.5e9, "fp16", "adam", True, Parallelism(64, 1)).fits_on()]
    assert "V100-32GB" in fits and "V100-16GB" not in fits


@pytest.mark.parametrize("kwargs, message", [
    (dict(dtype="fp12"), "unknown dtype 'fp12'"),
    (dict(dtype="int8"), "unknown dtype 'int8'"),
    (dict(optimizer="adma"), "unknown optimizer 'adma' (did you mean: adam"),
    (dict(dtype="fp32", mixed_precision=True), "mixed precision computes in 16 bits"),
    (dict(batch=0), "batch size must be a positive number"),
    (dict(seq_len=-5), "sequence length must be a positive number"),
])
def test_bad_training_inputs(kwargs, message):
    with pytest.raises(LmlabError, match=message.replace("(", r"\(")):
        plan_training_memory(1e9, **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(gpus=0), "at least 1"),
    (dict(gpus=8, zero=4), "ZeRO stage must be 0, 1, 2 or 3"),
    (dict(gpus=8, zero=3, sharding_factor=3), "sharding factor 3 does not divide the 8 GPUs"),
    (dict(gpus=8, zero=0, offload="cpu"), "CPU offload needs ZeRO stage"),
    (dict(gpus=8, zero=2, offload="nvme"), "offload target must be 'cpu'"),
])
def test_bad_parallelism(kwargs, message):
    with pytest.raises(LmlabError, match=message):
        Parallelism(**kwargs)


def test_zero_parameters_is_an_error():
    with pytest.raises(LmlabError, match="parameter count must be a positive number, not 0"):
        plan_inference_memory(0)
