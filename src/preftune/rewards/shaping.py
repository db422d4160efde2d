"""Turning raw sequence rewards into training signals: missing-EOS penalty, clipping, running
normalisation, and the adaptive KL coefficient (Ziegler et al. 2019)."""
from __future__ import annotations

import math

import torch


class RunningMoments:
    """Running mean and standard deviation of everything seen (Chan et al.'s parallel update)."""

    def __init__(self):
        self.count, self.mean, self.var = 0, 0.0, 1.0

    def update(self, x: torch.Tensor) -> None:
        n = x.numel()
        if n == 0:
            return
        m, v = float(x.mean()), float(x.var(unbiased=False))
        total = self.count + n
        delta = m - self.mean
        self.var = (self.var * self.count + v * n + delta ** 2 * self.count * n / total) / total
        self.mean += delta * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 1e-8))

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "var": self.var}

    def load_state_dict(self, d: dict) -> None:
        self.count, self.mean, self.var = d["count"], d["mean"], d["var"]


def shape_scores(scores: torch.Tensor, ended: torch.Tensor, *, missing_eos_penalty: float | None,
                 clip: float, moments: RunningMoments | None, gather=None) -> torch.Tensor:
    """Penalise completions without EOS, then clip to [−clip, clip] (0 = off), then normalise by the
    running mean and std (when ``moments`` is given), updated with ``gather(scores)`` — every
    process's scores, so that all hold the same statistics."""
    scores = scores.clone()
    if missing_eos_penalty is not None:
        scores[~ended] -= missing_eos_penalty
    if clip > 0:
        scores = scores.clamp(-clip, clip)
    if moments is not None:
        moments.update(gather(scores) if gather else scores)
        scores = (scores - moments.mean) / moments.std
    return scores


class KLController:
    """β fixed, or adapted towards ``target`` KL per sequence: β ← β·(1 + clip(KL/target − 1, ±0.2)·n/horizon)."""

    def __init__(self, init: float, target: float | None = None, horizon: int = 10000):
        self.value, self.target, self.horizon = init, target, horizon

    def update(self, kl: float, n_steps: int) -> None:
        if self.target:
            error = min(max(kl / self.target - 1, -0.2), 0.2)
            self.value *= 1 + error * n_steps / self.horizon
