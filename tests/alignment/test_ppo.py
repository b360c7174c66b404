"""PPO's pieces against hand computations on a fixed toy trajectory."""

from __future__ import annotations

import math

import pytest
import torch

from lmlab.alignment.ppo import AdaptiveKL, clipped_policy_loss, clipped_value_loss, gae, kl_penalized_rewards

# one answer of 3 tokens (then a padding position), one of 2 tokens
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
REWARDS = torch.tensor([[0.1, -0.2, 1.0, 0.0], [0.0, 0.5, 0.0, 0.0]])
VALUES = torch.tensor([[0.3, 0.2, 0.4, 9.0], [0.1, -0.1, 9.0, 9.0]])


def test_gae_equals_the_recursion_by_hand():
    gamma, lam = 0.9, 0.8
    advantages, returns = gae(REWARDS, VALUES, MASK, gamma, lam)
    # row 0: deltas written out, V after the last answer token is 0
    d2 = 1.0 + gamma * 0 - 0.4
    d1 = -0.2 + gamma * 0.4 - 0.2
    d0 = 0.1 + gamma * 0.2 - 0.3
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    # row 1
    e1 = 0.5 - (-0.1)
    e0 = 0.0 + gamma * (-0.1) - 0.1
    b1, b0 = e1, e0 + gamma * lam * e1
    expected = torch.tensor([[a0, a1, a2, 0.0], [b0, b1, 0.0, 0.0]])
    assert torch.allclose(advantages, expected, atol=1e-6)
    assert torch.allclose(returns, (expected + VALUES) * MASK, atol=1e-6)


def test_clipped_policy_loss_by_hand():
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5, 1.0], [0.5, 0.5, 1.0, 1.0]]))
    new = torch.log(torch.tensor([[0.8, 0.4, 0.5, 0.3], [0.45, 0.3, 0.2, 1.0]]))
    adv = torch.tensor([[1.0, 1.0, -2.0, 5.0], [-1.0, -1.0, 3.0, 3.0]])
    ratios = [[1.6, 0.8, 1.0], [0.9, 0.6]]
    terms = []
    for row, r_row in enumerate(ratios):
        for t, r in enumerate(r_row):
            a = float(adv[row, t])
            terms.append(max(-a * r, -a * min(max(r, 0.8), 1.2)))
    expected = sum(terms) / len(terms)  # 1.6 clipped to 1.2 for a positive advantage; 0.6 to 0.8 for a negative
    assert float(clipped_policy_loss(new, old, adv, MASK, clip=0.2)) == pytest.approx(expected, abs=1e-6)


def test_clipped_value_loss_by_hand():
    old = torch.tensor([[0.0, 1.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
    new = torch.tensor([[0.5, 1.1, -0.1, 7.0], [1.0, 0.3, 7.0, 7.0]])
    ret = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    pairs = [(0.5, 0.2, 1.0), (1.1, 1.1, 0.0), (-0.1, -0.1, 0.0), (1.0, 1.8, 0.0), (0.3, 0.2, 1.0)]  # (V, clipped V, R)
    expected = 0.5 * sum(max((v - r) ** 2, (c - r) ** 2) for v, c, r in pairs) / 5
    assert float(clipped_value_loss(new, old, ret, MASK, clip=0.2)) == pytest.approx(expected, abs=1e-6)


def test_kl_penalty_per_token_and_score_on_the_last_token():
    logps = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-1.0, -1.0, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, 0.0], [-0.5, -2.0, 0.0, 0.0]])
    rewards = kl_penalized_rewards(logps, ref, torch.tensor([2.0, -1.0]), kl_coef=0.1, mask=MASK)
    expected = torch.tensor([[-0.05, 0.1, 2.0, 0.0], [0.05, -0.1 - 1.0, 0.0, 0.0]])
    assert torch.allclose(rewards, expected, atol=1e-6)


def test_adaptive_kl_follows_ziegler():
    controller = AdaptiveKL(coef=0.2, target=6.0, horizon=10000)
    assert controller.update(kl=12.0, n_samples=256) == pytest.approx(0.2 * (1 + 0.2 * 256 / 10000))
    assert controller.update(kl=5.4, n_samples=100) == pytest.approx(0.2 * (1 + 0.2 * 256 / 10000)
                                                                     * (1 - 0.1 * 100 / 10000))
    assert math.isfinite(controller.coef)
