"""Evaluation: reward accuracy, win rate, KL to the reference, Elo, the reward-vs-KL frontier."""
from .metrics import elo_ratings, reward_accuracy, win_rate
from .policy import PolicySamples, sample_and_score

__all__ = ["PolicySamples", "elo_ratings", "reward_accuracy", "sample_and_score", "win_rate"]
