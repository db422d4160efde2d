"""preftune: tune language models on preferences — SFT, reward models, PPO-RLHF (RLOO, GRPO) and
the DPO family, with an embedded offline default (``preftune demo``)."""

__version__ = "0.1.0"
