"""Labelling sampled completions with a reward, the way human labels are noisy: pairs by
Bradley–Terry sampling, rankings by Plackett–Luce sampling.

    pairs:    P(y₁ ≻ y₂) = σ((r₁ − r₂)/T)
    rankings: P(τ) = Π_k exp(r_τ(k)/T) / Σ_{j≥k} exp(r_τ(j)/T), drawn by sorting r/T + Gumbel noise
T → 0 gives the exact order of the reward.
"""
from __future__ import annotations

import itertools
import math
import random


def bradley_terry_pair(r1: float, r2: float, temperature: float, rng: random.Random) -> bool:
    """True when y₁ is labelled the preferred one."""
    if temperature <= 0:
        return r1 > r2 if r1 != r2 else rng.random() < 0.5
    z = (r1 - r2) / temperature
    p = 1 / (1 + math.exp(-z)) if z > -700 else 0.0
    return rng.random() < p


def plackett_luce_ranking(rewards: list[float], temperature: float, rng: random.Random) -> list[int]:
    """Indices best → worst."""
    if temperature <= 0:
        return sorted(range(len(rewards)), key=lambda i: (-rewards[i], rng.random()))
    keys = [r / temperature - math.log(-math.log(rng.random() or 1e-300)) for r in rewards]
    return sorted(range(len(rewards)), key=lambda i: -keys[i])


def preference_rows(prompts: list, completions: list[list[str]], rewards: list[list[float]], *,
                    temperature: float, seed: int, all_pairs: bool = False) -> tuple[list[dict], list[dict]]:
    """From K ≥ 2 scored completions per prompt: labelled pairs — one per prompt (two different
    completions drawn at random) or, with ``all_pairs``, every one of the C(K', 2) pairs of its K'
    different completions (as the DPO paper's experiments use the samples) — each labelled by its
    own Bradley–Terry draw; and one ranking per prompt (Plackett–Luce). Rows carry the true rewards
    too (``reward_chosen`` …, ``scores``) for evaluation."""
    rng = random.Random(seed)
    pairs, rankings = [], []
    for prompt, comps, rs in zip(prompts, completions, rewards):
        rankings.append({"prompt": prompt, "completions": comps,
                         "ranking": plackett_luce_ranking(rs, temperature, rng), "true_scores": rs})
        distinct = list({c: k for k, c in enumerate(comps)}.values())
        if len(distinct) < 2:
            continue
        chosen_pairs = itertools.combinations(distinct, 2) if all_pairs else [rng.sample(distinct, 2)]
        for i, j in chosen_pairs:
            if not bradley_terry_pair(rs[i], rs[j], temperature, rng):
                i, j = j, i
            pairs.append({"prompt": prompt, "chosen": comps[i], "rejected": comps[j],
                          "reward_chosen": rs[i], "reward_rejected": rs[j]})
    return pairs, rankings
