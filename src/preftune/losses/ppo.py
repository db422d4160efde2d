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



# GRPO's loss family as Hugging Face TRL 1.16 GRPOTrainer computes it (``_compute_loss``), by loss_type →
# what the trainer averages one batch's loss over when it accumulates micro-batches and processes:
# "tokens" (dapo, cispo: the whole step's completion tokens), "sequences" (grpo, dr_grpo, sapo, luspo: TRL's
# mean over sequences, then over accumulation steps) or "batches" (bnpo: a mean of per-batch token means).
GRPO_LOSSES = {"grpo": "sequences", "dr_grpo": "sequences", "dapo": "tokens", "bnpo": "batches",
               "cispo": "tokens", "sapo": "sequences", "luspo": "sequences"}


def grpo_loss(loss_type: str, logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, *,
              ref_logps: Tensor | None = None, beta: float = 0.0, epsilon: float = 0.2,
              epsilon_high: float | None = None, importance_sampling: str = "token",
              max_completion_length: int | None = None, bias_corrected_kl: bool = False,
              sapo_temperature_pos: float = 1.0, sapo_temperature_neg: float = 1.05) -> Tensor:
    """The loss of one batch of completions (B, T) with sequence advantages A (B,), as TRL 1.16 computes it.

    Ratio r = exp(log π − log π_old) per token, or per sequence (GSPO, Zheng et al. 2025:
    exp of the mean over the sequence's tokens). Per-token loss l:
      grpo, dr_grpo, dapo, bnpo, luspo: −min(r·A, clip(r, 1 − ε, 1 + ε_high)·A)   (Shao et al. 2024; DAPO's
        clip-higher ε_high, Yu et al. 2025);
      cispo: −sg(min(r, ε_high))·A·log π   (MiniMax-M1, 2025; ε_high is the cap on r, no lower clip);
      sapo: −σ(τ(r − 1))·4/τ·A, τ = τ_pos if A > 0 else τ_neg   (Soft Adaptive Policy Optimization, 2025).
    KL (β ≠ 0): + β·k3, k3 = exp(ref − log π) − (ref − log π) − 1, times r with ``bias_corrected_kl``
    (DeepSeek-V3.2). Aggregation over mask m, nᵢ = Σₜ mᵢₜ: grpo, sapo: meanᵢ Σₜ m·l / max(nᵢ, 1);
    dapo, bnpo, cispo: Σ m·l / max(Σ m, 1); dr_grpo: Σ m·l / (B·max_completion_length) (Liu et al. 2025,
    None → T); luspo: meanᵢ Σₜ m·l (a sequence's loss scaled by its length).
    """
    if loss_type not in GRPO_LOSSES:
        raise ValueError(f"unknown GRPO loss_type {loss_type!r}; choose one of {', '.join(GRPO_LOSSES)}")
    mask = mask.to(logps.dtype)
    eps_high = epsilon if epsilon_high is None else epsilon_high
    adv = advantages.to(logps.dtype).unsqueeze(1)
    log_ratio = (logps - old_logps) * mask        # masked positions hold arbitrary numbers
    if importance_sampling == "token":
        log_weights = log_ratio
    elif importance_sampling == "sequence":
        log_weights = (log_ratio.sum(1) / mask.sum(1).clamp(min=1)).unsqueeze(1)
    else:
        raise ValueError(f"unknown importance_sampling {importance_sampling!r}; choose token or sequence")
    ratio = torch.exp(log_weights)
    if loss_type == "cispo":
        per_token = -torch.clamp(ratio, max=eps_high).detach() * adv * logps
    elif loss_type == "sapo":
        tau = torch.where(adv > 0, torch.full_like(adv, sapo_temperature_pos),
                          torch.full_like(adv, sapo_temperature_neg))
        per_token = -torch.sigmoid(tau * (ratio - 1)) * 4 / tau * adv
    else:
        per_token = -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - epsilon, 1 + eps_high) * adv)
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta ≠ 0 needs ref_logps")
        kl = kl_estimate(logps * mask, ref_logps * mask, "k3")
        per_token = per_token + beta * (kl * ratio if bias_corrected_kl else kl)
    per_token = per_token * mask
    if loss_type in ("grpo", "sapo"):
        return (per_token.sum(1) / mask.sum(1).clamp(min=1)).mean()
    if loss_type == "luspo":
        return per_token.sum(1).mean()
    if loss_type == "dr_grpo":
        return per_token.sum() / (logps.shape[0] * (max_completion_length or logps.shape[1]))
    return per_token.sum() / mask.sum().clamp(min=1)


def grpo_loss_weight(loss_type: str, mask: Tensor) -> int:
    """How much of one step's accumulated batch a micro-batch is, in GRPO_LOSSES' unit: the trainer sums
    weight × ``grpo_loss`` over micro-batches and processes and divides by the summed weights, which is TRL's
    normalisation when one optimizer step covers one generation batch."""
    unit = GRPO_LOSSES[loss_type]
    return int(mask.sum()) if unit == "tokens" else mask.shape[0] if unit == "sequences" else 1
