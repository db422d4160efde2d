"""The GRPO loss family and the advantage estimators against float64 transcriptions of their formulas
(TRL 1.16 GRPOTrainer._compute_loss and _generate_and_score_completions), element by element."""
import math

import pytest
import torch

from preftune.losses.advantages import ADVANTAGES, grpo_advantages, nanstd, reinforce_pp_advantages, rloo_advantages
from preftune.losses.ppo import GRPO_LOSSES, grpo_loss, grpo_loss_weight


def reference(loss_type, logps, old, adv, mask, ref=None, beta=0.0, eps=0.2, eps_high=None, level="token",
              max_len=None, bias_corrected=False, tau_pos=1.0, tau_neg=1.05):
    """Scalar-by-scalar, in float64, from the formulas in DESIGN.md / TRL 1.16."""
    B, T = logps.shape
    eh = eps if eps_high is None else eps_high
    n = [sum(float(mask[i, t]) for t in range(T)) for i in range(B)]
    rows = []
    for i in range(B):
        seq_ratio = None
        if level == "sequence":
            seq_ratio = torch.exp(sum((logps[i, t] - old[i, t]) * float(mask[i, t]) for t in range(T)) / max(n[i], 1))
        row = []
        for t in range(T):
            r = seq_ratio if seq_ratio is not None else torch.exp(logps[i, t] - old[i, t])
            a = adv[i]
            if loss_type == "cispo":
                l = -torch.clamp(r, max=eh).detach() * a * logps[i, t]
            elif loss_type == "sapo":
                tau = tau_pos if a > 0 else tau_neg
                l = -torch.sigmoid(tau * (r - 1)) * 4 / tau * a
            else:
                l = -torch.minimum(r * a, torch.clamp(r, 1 - eps, 1 + eh) * a)
            if beta:
                d = ref[i, t] - logps[i, t]
                kl = torch.exp(d) - d - 1
                l = l + beta * (kl * r if bias_corrected else kl)
            row.append(l * float(mask[i, t]))
        rows.append(row)
    total = sum(sum(row) for row in rows)
    if loss_type in ("grpo", "sapo"):
        return sum(sum(row) / max(n[i], 1) for i, row in enumerate(rows)) / B
    if loss_type == "luspo":
        return total / B
    if loss_type == "dr_grpo":
        return total / (B * (max_len or T))
    return total / max(sum(n), 1)


def batch(seed=0, B=4, T=5, spread=0.5):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    logps = (old + spread * torch.randn(B, T, generator=g, dtype=torch.float64)).requires_grad_(True)
    ref = old + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    mask = torch.ones(B, T, dtype=torch.float64)
    mask[1, 3:] = 0
    mask[2, 1:] = 0
    mask[3, :] = 0                   # an empty completion
    with torch.no_grad():            # what masked positions hold must not matter
        logps[mask == 0] = 40.0
    return logps, old, adv, mask, ref


CASES = [dict(), dict(eps_high=0.28), dict(beta=0.04), dict(beta=0.04, bias_corrected=True),
         dict(level="sequence"), dict(level="sequence", beta=0.1, bias_corrected=True), dict(max_len=9)]


@pytest.mark.parametrize("loss_type", sorted(GRPO_LOSSES))
@pytest.mark.parametrize("case", range(len(CASES)))
def test_grpo_loss_equals_its_formula_in_value_and_gradient(loss_type, case):
    opts = dict(CASES[case])
    if loss_type == "cispo":
        opts["eps_high"] = 5.0 if "eps_high" not in opts else 1.1
    logps, old, adv, mask, ref = batch(seed=case)
    got = grpo_loss(loss_type, logps, old, adv, mask, ref_logps=ref, beta=opts.get("beta", 0.0),
                    epsilon_high=opts.get("eps_high"), importance_sampling=opts.get("level", "token"),
                    max_completion_length=opts.get("max_len"), bias_corrected_kl=opts.get("bias_corrected", False))
    (grad,) = torch.autograd.grad(got, logps)
    want = reference(loss_type, logps, old, adv, mask, ref, **opts)
    (want_grad,) = torch.autograd.grad(want, logps)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-12, abs=1e-14)
    assert torch.allclose(grad, want_grad, rtol=1e-10, atol=1e-14)
    assert torch.isfinite(grad).all() and (grad[mask == 0] == 0).all()


def test_edge_cases():
    logps, old, adv, mask, ref = batch(spread=0.0)
    with torch.no_grad():
        logps.copy_(torch.where(mask > 0, old, logps))
    # on-policy (r = 1): the clipped surrogate is −A per token; grpo is then −mean over non-empty rows of A
    got = grpo_loss("grpo", logps, old, adv, mask)
    nonempty = mask.sum(1) > 0
    assert float(got.detach()) == pytest.approx(float(-(adv * nonempty).sum() / len(adv)))
    # zero advantages and no KL: zero loss and zero gradient
    zero = grpo_loss("dapo", logps, old, torch.zeros_like(adv), mask)
    (g,) = torch.autograd.grad(zero, logps)
    assert float(zero) == 0 and (g == 0).all()
    # every token clipped (r far above 1 + ε with A > 0): no gradient through the surrogate
    far = (old + 2.0).requires_grad_(True)
    clipped = grpo_loss("bnpo", far, old, adv.abs() + 0.1, mask)
    (g,) = torch.autograd.grad(clipped, far)
    assert (g == 0).all() and float(clipped) == pytest.approx(float(-1.2 * ((adv.abs() + 0.1)[:, None] * mask).sum()
                                                                        / mask.sum()))
    # all completions empty: zero for every loss type, no NaN
    for loss_type in GRPO_LOSSES:
        assert float(grpo_loss(loss_type, logps, old, adv, torch.zeros_like(mask), epsilon_high=5.0)) == 0.0
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss("ppo", logps, old, adv, mask)
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss("dapo", logps, old, adv, mask, beta=0.1)


def test_weights_make_the_accumulated_step_trls_normalisation():
    """Σ weight·loss / Σ weight over two micro-batches = TRL's loss of the whole step (one generation batch):
    dapo over all tokens, grpo a mean over all sequences, bnpo a mean of per-batch means."""
    logps, old, adv, mask, ref = batch(B=6, T=4, seed=3)
    halves = [slice(0, 3), slice(3, 6)]
    for loss_type in GRPO_LOSSES:
        parts = [(grpo_loss(loss_type, logps[s], old[s], adv[s], mask[s], epsilon_high=5.0),
                  grpo_loss_weight(loss_type, mask[s])) for s in halves]
        step = sum(v * w for v, w in parts) / sum(w for _, w in parts)
        if loss_type == "bnpo":
            want = sum(v for v, _ in parts) / 2
        else:
            want = grpo_loss(loss_type, logps, old, adv, mask, epsilon_high=5.0)
        assert float(step) == pytest.approx(float(want), rel=1e-12), loss_type


def test_config_offers_every_loss():
    from preftune.config import GRPO_LOSS_TYPES
    assert tuple(GRPO_LOSSES) == GRPO_LOSS_TYPES


def f64(values):
    return torch.tensor(values, dtype=torch.float64)


def test_grpo_advantages_group_batch_none_and_none_rewards():
    nan = float("nan")
    r = f64([1.0, 0.0, 1.0, nan, 2.0, 2.0, 2.0, 2.0])
    for scale in ("group", "batch", "none"):
        adv, zero_std = grpo_advantages(r, 4, scale)
        for g in range(2):
            vals = [v for v in r[4 * g:4 * g + 4].tolist() if not math.isnan(v)]
            mean = sum(vals) / len(vals)
            std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
            all_vals = [v for v in r.tolist() if not math.isnan(v)]
            all_mean = sum(all_vals) / len(all_vals)
            batch_std = math.sqrt(sum((v - all_mean) ** 2 for v in all_vals) / (len(all_vals) - 1))
            scale_by = {"group": std + 1e-4, "batch": batch_std + 1e-4, "none": 1.0}[scale]
            for j in range(4):
                v = r[4 * g + j].item()
                want = 0.0 if math.isnan(v) else (v - mean) / scale_by
                assert adv[4 * g + j].item() == pytest.approx(want, abs=1e-12)
        assert zero_std.tolist() == ([False] * 4 + [True] * 4 if scale != "batch" else [False] * 8)
    with pytest.raises(ValueError, match="scale_rewards"):
        grpo_advantages(r, 4, "rank")


def test_rloo_and_reinforce_pp_baselines():
    nan = float("nan")
    r = f64([1.0, 2.0, 6.0, nan, 3.0, nan])
    assert rloo_advantages(r, 3).tolist() == pytest.approx([1 - 4, 2 - 3.5, 6 - 1.5, 0.0, 0.0, 0.0])
    plain = f64([1.0, 2.0, 6.0, 3.0])
    mean, std = 3.0, math.sqrt(((2 ** 2) + 1 + 9 + 0) / 3)
    assert reinforce_pp_advantages(plain).tolist() == pytest.approx([(v - mean) / (std + 1e-8) for v in plain.tolist()])
    centred = f64([-0.5, 0.5, 1.5, -1.5])
    assert reinforce_pp_advantages(plain, 2).tolist() == pytest.approx(
        reinforce_pp_advantages(centred).tolist())
    assert math.isnan(float(nanstd(f64([1.0, nan]))))
    assert set(ADVANTAGES) == {"gae", "grpo", "rloo", "reinforce_pp"}
