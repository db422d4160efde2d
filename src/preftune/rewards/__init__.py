"""Reward sources: a trained reward-model folder, or a Python callable ``module:function``."""
from .sources import RewardModel, load_reward_source

__all__ = ["RewardModel", "load_reward_source"]
