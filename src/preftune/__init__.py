"""preftune: tune language models on preferences — SFT, reward models, PPO-RLHF (RLOO, GRPO) and
the DPO family, with an embedded offline default (``preftune demo``).

As a library: ``preftune.sft``, ``rm``, ``dpo``, ``kto``, ``ppo``, ``generate``, ``score``, ``evaluate``
(see ``preftune.api``). They are imported on first use, so ``import preftune`` loads no torch."""

__version__ = "0.1.0"
API = ("sft", "rm", "dpo", "kto", "ppo", "generate", "score", "evaluate", "Result")
__all__ = list(API)


def __getattr__(name: str):
    if name in API:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'preftune' has no attribute {name!r}")
