"""Advantage estimators as pure functions, by name (``ADVANTAGES``). Sequence rewards come as (N,) in
groups of ``k`` consecutive completions of one prompt; NaN marks a completion no reward applies to (it
is left out of every baseline and gets advantage 0, as TRL 1.16 does). GAE, for PPO's per-token
rewards and values, is ``losses.ppo.gae``."""
from __future__ import annotations

import torch
from torch import Tensor

from .ppo import gae


def nanstd(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    """The Bessel-corrected standard deviation of the non-NaN entries, NaN with fewer than two (TRL's
    ``nanstd``)."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    count = torch.sum(~torch.isnan(x), dim=dim, keepdim=True).to(x.dtype)
    variance = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True) * torch.where(
        count > 1, count / (count - 1), torch.full_like(mean, float("nan")))
    std = torch.sqrt(variance)
    return std if keepdim else std.squeeze() if dim is None else std.squeeze(dim)


def grpo_advantages(rewards: Tensor, k: int, scale_rewards: str = "group") -> tuple[Tensor, Tensor]:
    """GRPO's group-relative advantage (Shao et al. 2024, DeepSeekMath): Aᵢ = (rᵢ − mean_group) / (std + 1e-4),
    std over the group (``group``), over the whole batch (``batch``, PPO-Lite) or no scaling (``none``,
    Dr. GRPO: Liu et al. 2025). Returns (advantages (N,), whether the std was zero (N,), for
    ``frac_reward_zero_std``) — TRL 1.16's ``sum_then_normalize``."""
    groups = rewards.view(-1, k)
    mean = torch.nanmean(groups, dim=1, keepdim=True).expand_as(groups).reshape(-1)
    if scale_rewards in ("group", "none"):
        std = nanstd(groups, dim=1, keepdim=True).expand_as(groups).reshape(-1)
    elif scale_rewards == "batch":
        std = nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    else:
        raise ValueError(f"scale_rewards must be group, batch or none; got {scale_rewards!r}")
    advantages = rewards - mean
    if scale_rewards != "none":
        advantages = advantages / (std + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0), torch.isclose(std, torch.zeros_like(std))


def rloo_advantages(rewards: Tensor, k: int) -> Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024): Aᵢ = rᵢ − mean of the other scorable
    completions of its prompt (0 where it has none)."""
    groups = rewards.view(-1, k)
    scorable = ~torch.isnan(groups)
    total, count = torch.nansum(groups, dim=1, keepdim=True), scorable.sum(1, keepdim=True)
    baseline = (total - torch.nan_to_num(groups)) / (count - 1).clamp(min=1)
    advantages = torch.where(scorable & (count > 1), groups - baseline, torch.zeros_like(groups))
    return torch.nan_to_num(advantages, nan=0.0).reshape(-1)


def reinforce_pp_advantages(rewards: Tensor, k: int = 1) -> Tensor:
    """REINFORCE++ (Hu et al. 2025): the batch baseline — Aᵢ = (rᵢ − mean) / (std + 1e-8) over the whole
    batch; with k > 1 (REINFORCE++-baseline) each prompt's group mean is subtracted first."""
    if k > 1:
        groups = rewards.view(-1, k)
        rewards = (groups - torch.nanmean(groups, dim=1, keepdim=True)).reshape(-1)
    advantages = (rewards - torch.nanmean(rewards)) / (nanstd(rewards) + 1e-8)
    return torch.nan_to_num(advantages, nan=0.0)


ADVANTAGES = {"gae": gae, "grpo": grpo_advantages, "rloo": rloo_advantages, "reinforce_pp": reinforce_pp_advantages}
