"""Aligning a language model with human preferences: preference data, reward models (Bradley-Terry), DPO,
and RLHF with PPO."""
