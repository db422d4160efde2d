"""Comparison metrics over ground-truth (or model) rewards."""
from __future__ import annotations

import math
from itertools import combinations

import torch


def reward_accuracy(chosen: list[float], rejected: list[float]) -> float:
    """Share of pairs whose chosen reward is higher (ties count half)."""
    return sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected)) / max(len(chosen), 1)


def win_rate(a: list[float], b: list[float]) -> float:
    """Share of prompts on which completion a beats completion b by reward (ties count half)."""
    return reward_accuracy(a, b)


def elo_ratings(rewards: dict[str, list[float]], *, anchor: str | None = None, base: float = 1000.0,
                iters: int = 2000) -> dict[str, float]:
    """Elo ratings from pairwise judgments: on each prompt every two policies play one game, won by
    the higher reward (a tie is half a win each). Ratings are the Bradley–Terry maximum-likelihood
    strengths (order-free, unlike sequential Elo updates) on the Elo scale, 400·log10 odds, with a
    tiny L2 prior so undefeated policies stay finite; ``anchor`` (default: the first) sits at ``base``."""
    names = list(rewards)
    wins = torch.zeros(len(names), len(names), dtype=torch.float64)
    for (i, a), (j, b) in combinations(enumerate(names), 2):
        for ra, rb in zip(rewards[a], rewards[b]):
            s = 1.0 if ra > rb else 0.5 if ra == rb else 0.0
            wins[i, j] += s
            wins[j, i] += 1 - s
    theta = torch.zeros(len(names), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        diff = theta[:, None] - theta[None, :]
        nll = -(wins * torch.nn.functional.logsigmoid(diff)).sum() + 1e-3 * (theta ** 2).sum()
        nll.backward()
        return nll

    opt.step(closure)
    strength = theta.detach()
    ref = strength[names.index(anchor) if anchor else 0]
    scale = 400 / math.log(10)
    return {n: base + scale * float(s - ref) for n, s in zip(names, strength)}
