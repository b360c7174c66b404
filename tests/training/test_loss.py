"""The shared loss: computing the head on the labelled positions alone changes nothing but the cost."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmlab.config import get_preset
from lmlab.data.collators import IGNORE_INDEX
from lmlab.models import Transformer
from lmlab.training.objectives import loss_sum


def full_head_loss(model: Transformer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The reference: logits at every position, ignored labels skipped by cross_entropy."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits
    return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX,
                           reduction="sum")


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-bert", "tiny-t5"])
def test_loss_on_labelled_positions_equals_the_full_head_loss(preset: str):
    model = Transformer(get_preset(preset)).init_weights(seed=0)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 500, (3, 12), generator=generator)
    labels = torch.randint(5, 500, (3, 12), generator=generator)
    labels[torch.rand(3, 12, generator=generator) < 0.7] = IGNORE_INDEX  # a completion or masked-LM pattern
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    if model.config.arch == "encoder-decoder":
        batch.update(decoder_input_ids=ids.flip(1), decoder_attention_mask=torch.ones_like(ids))
    fast = loss_sum(model, batch)
    fast.backward()
    fast_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    reference = full_head_loss(model, batch)
    reference.backward()
    torch.testing.assert_close(fast, reference, rtol=1e-6, atol=1e-5)
    for got, want in zip(fast_grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_whole_sequence_head_refuses_a_logits_mask():
    model = Transformer(get_preset("tiny-bert").replace(head="sequence-classification", num_labels=2))
    ids = torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="per-position head"):
        model(ids, logits_mask=torch.ones_like(ids, dtype=torch.bool))
