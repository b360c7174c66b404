"""The pieces of RLHF with PPO (Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022), each a formula.

A rollout: the policy answers a prompt token by token; the reward model scores
the whole answer once. The reward of each answer token t is

    r_t = -kl_coef * (log pi(a_t|s_t) - log pi_ref(a_t|s_t))     (+ the reward model's score at the last token)

a per-token KL penalty that keeps the policy near the reference model
(Ziegler et al. 2019, equation 2; Stiennon et al. 2020, equation 1). The
coefficient is fixed, or adapted so the KL stays near a target (Ziegler et al.
2019, section 2.2: kl_coef *= 1 + clip((KL / target - 1), -0.2, 0.2) * n / horizon).

A value head V(s_t) estimates the return. Generalized Advantage Estimation
(Schulman et al. 2016, equation 16):

    delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)        (V after the last token: 0)
    A_t = delta_t + gamma * lambda * A_{t+1}
    return_t = A_t + V(s_t)

The clipped surrogate objective (Schulman et al. 2017, equation 7), as a loss
to minimize, with ratio_t = pi_theta(a_t|s_t) / pi_old(a_t|s_t):

    policy loss = mean_t max(-A_t * ratio_t, -A_t * clip(ratio_t, 1 - eps, 1 + eps))

and the clipped value loss (as OpenAI's baselines and TRL's PPOTrainer):

    value loss = 0.5 * mean_t max((V_t - R_t)^2, (clip(V_t, V_old - eps_v, V_old + eps_v) - R_t)^2)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def kl_penalized_rewards(logps: torch.Tensor, ref_logps: torch.Tensor, score: torch.Tensor, kl_coef: float,
                         mask: torch.Tensor) -> torch.Tensor:
    """r_t = -kl_coef * (log pi - log pi_ref) on every answer token, plus the reward model's `score` [B] on each
    row's last answer token; [B, T], zero where `mask` is 0."""
    rewards = -kl_coef * (logps - ref_logps) * mask
    last = mask.long().cumsum(1).argmax(1)  # the last position where mask is 1
    rewards[torch.arange(rewards.shape[0]), last] += score
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) [B, T] by Generalized Advantage Estimation (see the module docstring); positions
    where `mask` is 0 (padding after the answer) have neither."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    next_value = torch.zeros_like(running)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running * mask[:, t]
        running = running * mask[:, t]
        next_value = values[:, t] * mask[:, t]
    return advantages, (advantages + values) * mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum()


def clipped_policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                        clip: float = 0.2) -> torch.Tensor:
    """PPO's clipped surrogate loss (Schulman et al. 2017, equation 7), the mean over answer tokens."""
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - clip, 1 + clip)
    return masked_mean(torch.maximum(-advantages * ratio, -advantages * clipped), mask)


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip: float = 0.2) -> torch.Tensor:
    """0.5 * the clipped squared error of the value head, the mean over answer tokens."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


@dataclass
class AdaptiveKL:
    """Ziegler et al. 2019's controller: the KL coefficient grows when the KL is above `target`, shrinks below,
    by at most 20% of the way per `horizon` samples."""

    coef: float
    target: float
    horizon: int = 10000

    def update(self, kl: float, n_samples: int) -> float:
        error = max(-0.2, min(0.2, kl / self.target - 1))
        self.coef *= 1 + error * n_samples / self.horizon
        return self.coef
