"""Decoding rules as one logits filter: temperature, then top-k, then nucleus (top-p).

    temperature T: logits / T  (T → 0 is greedy: only the arg-max survives)
    top-k:  keep the k largest logits
    top-p:  keep the smallest set of most likely tokens whose probability sums to ≥ p
            (Holtzman et al. 2020); the most likely token is always kept
"""
from __future__ import annotations

import torch
from torch import Tensor
from transformers import LogitsProcessor


def filter_logits(logits: Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """(…, V) logits with the excluded tokens set to −inf; combine the three rules freely."""
    logits = logits.float()
    if temperature <= 0:
        keep = logits == logits.max(-1, keepdim=True).values
        first = keep.float().argmax(-1, keepdim=True)               # one arg-max on ties
        return torch.full_like(logits, float("-inf")).scatter(-1, first, 0.0)
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs                            # mass of strictly more likely tokens
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


class SamplingProcessor(LogitsProcessor):
    """``filter_logits`` as a ``transformers`` logits processor, so ``generate`` samples with it."""

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        return filter_logits(scores, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
