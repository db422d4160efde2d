"""Sampling (greedy, temperature, top-k, top-p), batched generation with a KV cache, rollouts."""
from .generate import Generation, generate
from .sampling import SamplingProcessor, filter_logits

__all__ = ["Generation", "SamplingProcessor", "filter_logits", "generate"]
