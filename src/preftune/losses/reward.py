"""Reward-model losses (Bradley–Terry and its K-wise forms), as pure functions of rewards."""
from __future__ import annotations

import itertools

import torch.nn.functional as F
from torch import Tensor


def pairwise_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, *, margin: Tensor | None = None) -> Tensor:
    """Bradley–Terry (Ouyang et al. 2022, eq. 1): −log σ(r_w − r_l − m), m an optional per-pair
    margin (Llama-2). Returns (B,)."""
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


def ranking_loss(rewards: Tensor, ranking: Tensor) -> Tensor:
    """InstructGPT K-wise loss: all C(K,2) ordered pairs (better, worse) of one prompt form one batch
    element; L = −1/C(K,2) · Σ_{i<j} log σ(r_{τ(i)} − r_{τ(j)}). rewards (B, K) from one forward
    pass per completion; ranking (B, K) indices best → worst. Returns (B,)."""
    ordered = rewards.gather(1, ranking.long())
    k = ordered.shape[1]
    better, worse = zip(*itertools.combinations(range(k), 2))
    diffs = ordered[:, list(better)] - ordered[:, list(worse)]
    return -F.logsigmoid(diffs).mean(1)


def best_of_n_loss(rewards: Tensor, best_index: Tensor) -> Tensor:
    """Best-of-n: K-way cross-entropy of softmax(rewards) against the index of the best completion.
    rewards (B, K), best_index (B,). Returns (B,)."""
    return F.cross_entropy(rewards, best_index.long(), reduction="none")


def centering_loss(rewards: Tensor, coef: float) -> Tensor:
    """Reward centering (Eisenstein et al. 2023): coef · r², per reward; keeps rewards near zero."""
    return coef * rewards.pow(2)
