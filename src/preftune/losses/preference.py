"""Preference losses of the DPO family, as pure functions of summed log-probs.

Notation (per pair b): π_w, π_l are the policy's summed log-probs of the chosen / rejected
completion, ref_w, ref_l the same under the frozen reference, and
    h = (π_w − ref_w) − (π_l − ref_l)
the difference of implicit rewards divided by β (DPO, Rafailov et al. 2023, eq. 7).
Every loss returns ``(losses, chosen_rewards, rejected_rewards)``, each of shape (B,); the rewards
are detached.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def _implicit_rewards(pi_w: Tensor, pi_l: Tensor, ref_w: Tensor, ref_l: Tensor, beta: float):
    return (beta * (pi_w - ref_w)).detach(), (beta * (pi_l - ref_l)).detach()


def sigmoid_loss(pi_w, pi_l, ref_w, ref_l, *, beta=0.1, label_smoothing=0.0, **_):
    """DPO: −log σ(β·h); with ε = ``label_smoothing``, cDPO: (1−ε)·L(w,l) + ε·L(l,w)."""
    logits = beta * ((pi_w - ref_w) - (pi_l - ref_l))
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return (losses, *_implicit_rewards(pi_w, pi_l, ref_w, ref_l, beta))


def ipo_loss(pi_w, pi_l, ref_w, ref_l, *, beta=0.1, **_):
    """IPO (Azar et al. 2023): (h − 1/(2τ))², with β as τ. The DPO recipe passes length-averaged
    log-probs, as the IPO paper does."""
    h = (pi_w - ref_w) - (pi_l - ref_l)
    return ((h - 1 / (2 * beta)) ** 2, *_implicit_rewards(pi_w, pi_l, ref_w, ref_l, beta))


def hinge_loss(pi_w, pi_l, ref_w, ref_l, *, beta=0.1, **_):
    """RSO / SLiC hinge (Liu et al. 2023): max(0, 1 − β·h)."""
    h = (pi_w - ref_w) - (pi_l - ref_l)
    return (torch.relu(1 - beta * h), *_implicit_rewards(pi_w, pi_l, ref_w, ref_l, beta))


def robust_loss(pi_w, pi_l, ref_w, ref_l, *, beta=0.1, label_smoothing=0.0, **_):
    """Robust DPO (Chowdhury et al. 2024), unbiased under label-flip rate ε < 1/2:
    [(1−ε)·L(w,l) − ε·L(l,w)] / (1 − 2ε)."""
    eps = label_smoothing
    logits = beta * ((pi_w - ref_w) - (pi_l - ref_l))
    losses = (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)
    return (losses, *_implicit_rewards(pi_w, pi_l, ref_w, ref_l, beta))


def dpop_loss(pi_w, pi_l, ref_w, ref_l, *, beta=0.1, lambda_=50.0, **_):
    """DPO-Positive (Pal et al. 2024): −log σ(β·(h − λ·max(0, ref_w − π_w)))."""
    h = (pi_w - ref_w) - (pi_l - ref_l)
    penalty = torch.relu(ref_w - pi_w)
    losses = -F.logsigmoid(beta * (h - lambda_ * penalty))
    return (losses, *_implicit_rewards(pi_w, pi_l, ref_w, ref_l, beta))


def bco_pair_loss(pi_w, pi_l, ref_w, ref_l, *, beta=0.1, **_):
    """BCO on pairs (Jung et al. 2024): −log σ(r_w − δ) − log σ(−(r_l − δ)), r = β(π − ref),
    δ = mean of the batch's chosen and rejected rewards (detached; the paper uses a running mean)."""
    r_w, r_l = beta * (pi_w - ref_w), beta * (pi_l - ref_l)
    delta = torch.cat([r_w, r_l]).mean().detach()
    losses = -F.logsigmoid(r_w - delta) - F.logsigmoid(-(r_l - delta))
    return (losses, r_w.detach(), r_l.detach())


def apo_zero_loss(pi_w, pi_l, ref_w, ref_l, *, beta=0.1, **_):
    """APO-zero (D'Oosterlinck et al. 2024): (1 − σ(r_w)) + σ(r_l), r = β(π − ref): raises the
    chosen likelihood and lowers the rejected one, for chosen outputs better than the policy's."""
    r_w, r_l = beta * (pi_w - ref_w), beta * (pi_l - ref_l)
    losses = 1 - torch.sigmoid(r_w) + torch.sigmoid(r_l)
    return (losses, r_w.detach(), r_l.detach())


def simpo_loss(pi_w, pi_l, ref_w=None, ref_l=None, *, beta=2.0, gamma=0.5,
               chosen_lengths=None, rejected_lengths=None, **_):
    """SimPO (Meng et al. 2024), reference-free: −log σ(β·π_w/|y_w| − β·π_l/|y_l| − γ);
    rewards β·π/|y|."""
    if chosen_lengths is None or rejected_lengths is None:
        raise ValueError("simpo needs chosen_lengths and rejected_lengths")
    r_w = beta * pi_w / chosen_lengths
    r_l = beta * pi_l / rejected_lengths
    losses = -F.logsigmoid(r_w - r_l - gamma)
    return (losses, r_w.detach(), r_l.detach())


def orpo_loss(pi_w, pi_l, ref_w=None, ref_l=None, *, beta=0.1,
              chosen_lengths=None, rejected_lengths=None, **_):
    """ORPO's odds-ratio term (Hong et al. 2024), reference-free, on length-averaged log-probs
    p = π/|y|: −β·log σ(log odds(y_w) − log odds(y_l)), log odds(y) = p − log(1 − eᵖ).
    The full ORPO objective adds the chosen NLL; the DPO recipe adds it for ``orpo``.
    Rewards β·p."""
    if chosen_lengths is None or rejected_lengths is None:
        raise ValueError("orpo needs chosen_lengths and rejected_lengths")
    p_w, p_l = pi_w / chosen_lengths, pi_l / rejected_lengths
    log_odds = (p_w - torch.log1p(-torch.exp(p_w))) - (p_l - torch.log1p(-torch.exp(p_l)))
    losses = -beta * F.logsigmoid(log_odds)
    return (losses, (beta * p_w).detach(), (beta * p_l).detach())


PREFERENCE_LOSSES: dict[str, Callable] = {
    "sigmoid": sigmoid_loss,
    "ipo": ipo_loss,
    "hinge": hinge_loss,
    "robust": robust_loss,
    "dpop": dpop_loss,
    "bco_pair": bco_pair_loss,
    "apo_zero": apo_zero_loss,
    "simpo": simpo_loss,
    "orpo": orpo_loss,
}
REFERENCE_FREE = frozenset({"simpo", "orpo"})
LENGTH_NORMALISED = frozenset({"ipo"})  # the recipe feeds these length-averaged log-probs


def preference_loss(name: str, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
                    ref_chosen_logps: Tensor | None, ref_rejected_logps: Tensor | None, *,
                    beta: float = 0.1, chosen_lengths: Tensor | None = None,
                    rejected_lengths: Tensor | None = None, **hparams):
    """Dispatch to the loss ``name`` of PREFERENCE_LOSSES; returns (losses, chosen_rewards,
    rejected_rewards), each (B,)."""
    if name not in PREFERENCE_LOSSES:
        raise ValueError(f"unknown preference loss {name!r}; choose from {sorted(PREFERENCE_LOSSES)}")
    if name not in REFERENCE_FREE and (ref_chosen_logps is None or ref_rejected_logps is None):
        raise ValueError(f"loss {name!r} needs reference log-probs")
    return PREFERENCE_LOSSES[name](
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        beta=beta, chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths, **hparams)


def dpo_loss(pi_logps: Tensor, ref_logps: Tensor, yw_idxs: Tensor, yl_idxs: Tensor, beta: float):
    """The reference notes' DPO loss (Rafailov et al. 2023, Appendix B).

    pi_logps, ref_logps: (B,) summed log-probs of every completion; (yw_idxs[i], yl_idxs[i]) index
    one preference pair. Returns per-pair losses (T,) and rewards β(π − ref) for all B, detached.
    """
    pi_logratios = pi_logps[yw_idxs] - pi_logps[yl_idxs]
    ref_logratios = ref_logps[yw_idxs] - ref_logps[yl_idxs]
    losses = -F.logsigmoid(beta * (pi_logratios - ref_logratios))
    rewards = beta * (pi_logps - ref_logps).detach()
    return losses, rewards


def plackett_luce_loss(policy_logps: Tensor, ref_logps: Tensor, ranking: Tensor, *, beta: float = 0.1):
    """Plackett–Luce DPO (Rafailov et al. 2023, Appendix A.3) over K ranked completions.

    policy_logps, ref_logps: (B, K); ranking: (B, K) indices best → worst. With
    s_k = β·(π − ref) of the completion ranked k-th:  L = −Σ_k [s_k − log Σ_{j≥k} exp s_j].
    K = 2 equals DPO's sigmoid loss.
    """
    scores = beta * (policy_logps - ref_logps)
    ordered = scores.gather(1, ranking.long())
    # log Σ_{j≥k} exp s_j: a reversed cumulative logsumexp.
    tail_lse = torch.logcumsumexp(ordered.flip(1), dim=1).flip(1)
    return -(ordered - tail_lse)[:, :-1].sum(1)


def kto_reference_point(policy_kl_logps: Tensor, ref_kl_logps: Tensor) -> Tensor:
    """KTO's reference point z₀ = max(0, mean_i [π(y'_i | x_i) − π_ref(y'_i | x_i)]), a detached estimate of
    KL(π‖π_ref) from mismatched pairs (x_i, y'_i) of the batch, each prompt with another row's
    completion (Ethayarajh et al. 2024, §4.1; TRL's KTOTrainer). Inputs (B,) summed log-probs; a scalar."""
    return (policy_kl_logps - ref_kl_logps).mean().clamp(min=0).detach()


def kto_loss(policy_logps: Tensor, ref_logps: Tensor, desirable: Tensor, reference_point: Tensor, *,
             beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
    """KTO (Ethayarajh et al. 2024, eq. 8) on unpaired completions. With r = π − ref (summed log-probs)
    and the reference point z₀ (``kto_reference_point``), an example's loss is
        λ_D · (1 − σ(β(r − z₀)))   if desirable,
        λ_U · (1 − σ(β(z₀ − r)))   if undesirable,
    i.e. λ_y − v(x, y) of the paper. policy_logps, ref_logps (B,), desirable (B,) bool.
    Returns (losses (B,), rewards β·r (B,), detached)."""
    logratio = policy_logps - ref_logps
    desirable = desirable.bool()
    value = torch.where(desirable, torch.sigmoid(beta * (logratio - reference_point)),
                        torch.sigmoid(beta * (reference_point - logratio)))
    weight = torch.where(desirable, torch.full_like(value, desirable_weight),
                         torch.full_like(value, undesirable_weight))
    return weight * (1 - value), (beta * logratio).detach()
