"""Measured training-step memory against exact counts, PyTorch's own autograd graph, and the planner."""

import pytest
import torch
import torch.nn.functional as F

from lmlab.config import get_preset
from lmlab.errors import LmlabError
from lmlab.models import Transformer
from lmlab.planning.measure import PeakMemory, measure_training_step, plan_step
from lmlab.planning.params import count_parameters

TINY = get_preset("tiny-gpt2").replace(vocab_size=64, d_model=32, n_layer=2, n_head=2, n_kv_head=2, d_head=16,
                                       d_ff=128, max_seq_len=32)


def _saved_by_graph(loss: torch.Tensor, model: torch.nn.Module) -> int:
    """Bytes of the tensors the autograd graph holds in its nodes' _saved_* slots, each storage once, no weights."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages, seen, stack = {}, set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for name in dir(node):
            if name.startswith("_saved_"):
                value = getattr(node, name)
                for tensor in value if isinstance(value, (tuple, list)) else [value]:
                    if torch.is_tensor(tensor) and tensor.untyped_storage().data_ptr() not in weights:
                        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        stack.extend(next_node for next_node, _ in node.next_functions)
    return sum(storages.values())


def test_model_states_are_counted_exactly():
    measured = measure_training_step(TINY, batch=2, seq_len=16)
    n_params = count_parameters(TINY)
    n_tensors = len(list(Transformer(TINY).parameters()))
    assert measured.weights == 4 * n_params == 4 * sum(p.numel() for p in Transformer(TINY).parameters())
    assert measured.gradients == measured.weights
    # AdamW: exp_avg and exp_avg_sq per weight, and a float32 step counter per tensor
    assert measured.optimizer_states == 2 * measured.weights + 4 * n_tensors
    assert measure_training_step(TINY, 2, 16, optimizer="sgd").optimizer_states == measured.weights


def test_saved_activations_equal_what_the_autograd_graph_holds():
    measured = measure_training_step(TINY, batch=2, seq_len=16, seed=3)
    model = Transformer(TINY).init_weights(seed=3).train()
    tokens = torch.randint(0, TINY.vocab_size, (2, 17), generator=torch.Generator().manual_seed(3))
    loss = F.cross_entropy(model(tokens[:, :-1]).logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
    assert measured.activations == _saved_by_graph(loss, model)


@pytest.mark.parametrize("preset, batch, seq_len", [("tiny-gpt2", 4, 64), ("tiny-llama", 2, 64)])
def test_plan_is_within_15_percent_of_the_measured_step(preset, batch, seq_len):
    config = get_preset(preset)
    measured = measure_training_step(config, batch, seq_len)
    plan = plan_step(config, batch, seq_len)
    assert measured.total == pytest.approx(plan.total_bytes, rel=0.15)
    assert plan.weights.bytes == measured.weights and plan.gradients.bytes == measured.gradients
    if preset == "tiny-gpt2":  # Korthikanti's per-layer count fits a GPT-2 block closely
        assert measured.activations == pytest.approx(plan.activations.bytes, rel=0.05)


def test_peak_memory_sees_a_large_allocation():
    peak = PeakMemory("cpu")
    if peak.peak_bytes() is None:
        pytest.skip("no /proc/self/status high-water mark on this system")
    block = torch.ones(16 * 2**20)  # 64 MiB, written so the pages are resident
    del block
    assert peak.peak_bytes() >= 60 * 2**20


def test_bad_input_is_one_clear_error():
    with pytest.raises(LmlabError, match="decoder"):
        measure_training_step(get_preset("tiny-bert"), 2, 16)
    with pytest.raises(LmlabError, match="beyond the model's context"):
        measure_training_step(TINY, 2, 64)
    with pytest.raises(LmlabError, match="optimizers"):
        measure_training_step(TINY, 2, 16, optimizer="lion")
