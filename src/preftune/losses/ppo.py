"""PPO pieces for RLHF, as pure functions (Schulman et al. 2017; Ouyang et al. 2022;
Huang et al. 2024, "The N implementation details of RLHF with PPO")."""
from __future__ import annotations

import torch
from torch import Tensor


def kl_estimate(logps: Tensor, ref_logps: Tensor, kind: str = "k1") -> Tensor:
    """Per-token estimators of KL(π‖π_ref) from tokens sampled from π (Schulman, "Approximating KL
    divergence", 2020), with log r = log π_ref − log π:
      k1 = −log r               unbiased, high variance, can be negative;
      k2 = ½ (log r)²           biased (low bias when π ≈ π_ref), always ≥ 0;
      k3 = (r − 1) − log r      unbiased, always ≥ 0, low variance.
    """
    log_ratio = ref_logps - logps
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.pow(2)
    if kind == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; choose k1, k2 or k3")


def gae(rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float = 1.0, lam: float = 0.95):
    """Generalised advantage estimation (Schulman et al. 2016) over (B, T) response tokens.

    δ_t = r_t + γ·V_{t+1} − V_t,  A_t = δ_t + γλ·A_{t+1}, with V and A beyond the last real token
    (mask = 0) taken as 0. Returns (advantages, returns = A + V), both zero where mask is 0.
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(values)
    next_adv = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = (delta + gamma * lam * next_adv) * m
        advantages[:, t] = adv
        # A padded position passes the later token's values through unchanged (mask holes).
        next_adv = torch.where(m > 0, adv, next_adv)
        next_value = torch.where(m > 0, values[:, t], next_value)
    return advantages, (advantages + values) * mask


def masked_mean(x: Tensor, mask: Tensor, dim=None) -> Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Normalise x over the masked entries to unit variance (and zero mean if shift_mean)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def policy_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, *, clip: float = 0.2):
    """Clipped surrogate, per token: max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)), ρ = exp(log π − log π_old).
    Returns (per-token loss, per-token clipped indicator)."""
    ratio = torch.exp(logps - old_logps)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    return torch.maximum(unclipped, clipped), (clipped > unclipped).to(logps.dtype)


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, *, clip: float = 0.2):
    """Clipped value loss, per token: ½·max((V − R)², (clip(V, V_old ± ε) − R)²)."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped_values - returns) ** 2)

