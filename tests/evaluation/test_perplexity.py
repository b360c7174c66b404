import math
import os
from types import SimpleNamespace

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.evaluation.perplexity import Window, perplexity, sliding_windows
from tests.tiny import hf_config

os.environ["HF_HUB_OFFLINE"] = "1"
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    config = hf_config("llama", 97, hidden_size=32, intermediate_size=64, max_position_embeddings=256,
                       initializer_range=0.2)  # larger than default so that context changes the predictions
    return transformers.LlamaForCausalLM(config).eval()


def token_ids(n, seed=1):
    return torch.randint(0, 97, (n,), generator=torch.Generator().manual_seed(seed))


def hf_guide_nll(model, ids, max_length, stride):
    """The loop of the Hugging Face guide "Perplexity of fixed-length models", with transformers' own loss."""
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + max_length, len(ids))
        target_length = end - prev_end
        input_ids = ids[begin:end].unsqueeze(0)
        labels = input_ids.clone()
        labels[:, :-target_length] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=labels).loss
        n_loss_tokens = int((labels[:, 1:] != -100).sum())  # the model shifts labels by one
        if n_loss_tokens:
            nll_sum += loss.item() * n_loss_tokens
            n_tokens += n_loss_tokens
        prev_end = end
        if end == len(ids):
            break
    return nll_sum / n_tokens, n_tokens


def test_text_within_one_window_gives_exp_of_the_transformers_loss(llama):
    ids = token_ids(40)
    with torch.no_grad():
        loss = llama(ids.unsqueeze(0), labels=ids.unsqueeze(0)).loss.item()
    result = perplexity(llama, ids.tolist(), max_length=64, stride=64, progress=False)
    assert result.n_tokens == 39
    assert result.nll == pytest.approx(loss, rel=1e-6)
    assert result.ppl == pytest.approx(math.exp(loss), rel=1e-6)


@pytest.mark.parametrize("stride", [32, 20, 7])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_long_text_matches_the_hf_guide_windows(llama, stride, batch_size):
    ids = token_ids(100)
    expected_nll, expected_n = hf_guide_nll(llama, ids, max_length=32, stride=stride)
    result = perplexity(llama, ids.unsqueeze(0), max_length=32, stride=stride, batch_size=batch_size, progress=False)
    assert result.n_tokens == expected_n
    assert result.nll == pytest.approx(expected_nll, rel=1e-5)


def test_windows_score_every_token_once():
    assert sliding_windows(10, max_length=4, stride=2) == [
        Window(0, 4, 1), Window(2, 6, 4), Window(4, 8, 6), Window(6, 10, 8)
    ]
    # Disjoint windows: each window's first token has no context; a last one-token window is dropped.
    assert sliding_windows(9, max_length=4, stride=4) == [Window(0, 4, 1), Window(4, 8, 5)]


class InductionModel(torch.nn.Module):
    """Predicts (logit 5) the token that followed the last earlier occurrence of the current token."""

    vocab_size = 50

    def forward(self, input_ids):
        batch, length = input_ids.shape
        logits = torch.zeros(batch, length, self.vocab_size)
        for b in range(batch):
            row = input_ids[b].tolist()
            for t in range(length):
                earlier = [s for s in range(t) if row[s] == row[t]]
                if earlier:
                    logits[b, t, row[earlier[-1] + 1]] = 5.0
        return SimpleNamespace(logits=logits)


def test_overlapping_windows_give_context_and_lower_perplexity():
    # A period-20 sequence: a token is predictable once the window holds its previous period.
    ids = torch.randperm(50, generator=torch.Generator().manual_seed(0))[:20].repeat(6)
    uniform = math.log(50)
    predicted = -math.log(math.exp(5) / (math.exp(5) + 49))
    # stride 4: the first window scores 20 unpredictable and 11 predictable tokens, then every
    # later token has at least 28 tokens of context: 88 more predictable tokens.
    overlapping = perplexity(InductionModel(), ids, max_length=32, stride=4, progress=False)
    assert overlapping.n_tokens == 119
    assert overlapping.nll == pytest.approx((20 * uniform + 99 * predicted) / 119, rel=1e-6)
    # disjoint windows [0,32) [32,64) [64,96) [96,120): each starts without context.
    disjoint = perplexity(InductionModel(), ids, max_length=32, stride=32, batch_size=2, progress=False)
    assert disjoint.n_tokens == 116
    assert disjoint.nll == pytest.approx((80 * uniform + 36 * predicted) / 116, rel=1e-6)
    assert overlapping.ppl < disjoint.ppl


def test_leaves_the_model_in_training_mode_if_it_was(llama):
    llama.train()
    try:
        perplexity(llama, token_ids(10), max_length=8, stride=4, progress=False)
        assert llama.training
    finally:
        llama.eval()


@pytest.mark.parametrize(
    ("n", "max_length", "stride", "batch_size", "message"),
    [
        (1, 8, 4, 1, "at least 2 tokens"),
        (10, 1, 1, 1, "max_length must be at least 2"),
        (10, 8, 9, 1, "stride must be between 1 and max_length"),
        (10, 8, 0, 1, "stride must be between 1 and max_length"),
        (10, 8, 4, 0, "batch_size must be at least 1"),
    ],
)
def test_bad_arguments_are_one_line_errors(llama, n, max_length, stride, batch_size, message):
    with pytest.raises(LmlabError, match=message):
        perplexity(llama, token_ids(n), max_length=max_length, stride=stride, batch_size=batch_size)


def test_rejects_a_batch_of_sequences(llama):
    with pytest.raises(LmlabError, match=r"shape \(2, 10\)"):
        perplexity(llama, torch.zeros(2, 10, dtype=torch.long), max_length=8, stride=4)
