"""Every loss against a direct float64 transcription of its formula, its edge cases, and DPO's
analytic gradient."""
import itertools
import math

import pytest
import torch

from preftune.losses.preference import PREFERENCE_LOSSES, dpo_loss, plackett_luce_loss, preference_loss
from preftune.losses.reward import best_of_n_loss, centering_loss, pairwise_loss, ranking_loss

torch.manual_seed(0)
B = 16


def logps(n=B):
    return -torch.rand(n, dtype=torch.float64) * 40


def sig(x):
    return 1 / (1 + math.exp(-x))


def inputs():
    return logps(), logps(), logps(), logps(), torch.randint(3, 30, (B,)).double(), torch.randint(3, 30, (B,)).double()


def reference(name, pw, pl, rw, rl, lw, ll, beta, **hp):
    """Per-row float64 formulas, written out element by element."""
    out = []
    for i in range(B):
        h = (pw[i] - rw[i]) - (pl[i] - rl[i])
        h = float(h)
        if name == "sigmoid":
            eps = hp.get("label_smoothing", 0.0)
            out.append(-(1 - eps) * math.log(sig(beta * h)) - eps * math.log(sig(-beta * h)))
        elif name == "robust":
            eps = hp["label_smoothing"]
            out.append((-(1 - eps) * math.log(sig(beta * h)) + eps * math.log(sig(-beta * h))) / (1 - 2 * eps))
        elif name == "ipo":
            out.append((h - 1 / (2 * beta)) ** 2)
        elif name == "hinge":
            out.append(max(0.0, 1 - beta * h))
        elif name == "dpop":
            out.append(-math.log(sig(beta * (h - hp["lambda_"] * max(0.0, float(rw[i] - pw[i]))))))
        elif name == "simpo":
            out.append(-math.log(sig(beta * float(pw[i] / lw[i]) - beta * float(pl[i] / ll[i]) - hp["gamma"])))
        elif name == "orpo":
            a, b = float(pw[i] / lw[i]), float(pl[i] / ll[i])
            lo = (a - math.log(1 - math.exp(a))) - (b - math.log(1 - math.exp(b)))
            out.append(-beta * math.log(sig(lo)))
        elif name == "apo_zero":
            out.append(1 - sig(beta * float(pw[i] - rw[i])) + sig(beta * float(pl[i] - rl[i])))
        elif name == "bco_pair":
            rws, rls = beta * (pw - rw), beta * (pl - rl)
            d = float(torch.cat([rws, rls]).mean())
            out.append(-math.log(sig(float(rws[i]) - d)) - math.log(sig(-(float(rls[i]) - d))))
    return torch.tensor(out, dtype=torch.float64)


CASES = [("sigmoid", {}), ("sigmoid", {"label_smoothing": 0.2}), ("robust", {"label_smoothing": 0.1}),
         ("ipo", {}), ("hinge", {}), ("dpop", {"lambda_": 5.0}), ("simpo", {"gamma": 0.3}), ("orpo", {}),
         ("apo_zero", {}), ("bco_pair", {})]


@pytest.mark.parametrize("name,hp", CASES)
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_loss_equals_formula(name, hp, beta):
    pw, pl, rw, rl, lw, ll = inputs()
    losses, cr, rr = preference_loss(name, pw, pl, rw, rl, beta=beta, chosen_lengths=lw, rejected_lengths=ll, **hp)
    assert losses.shape == cr.shape == rr.shape == (B,)
    assert losses.dtype == torch.float64
    torch.testing.assert_close(losses, reference(name, pw, pl, rw, rl, lw, ll, beta, **hp), rtol=1e-10, atol=1e-10)
    if name in ("simpo",):
        torch.testing.assert_close(cr, beta * pw / lw)
    elif name not in ("orpo",):
        torch.testing.assert_close(cr, beta * (pw - rw))
        torch.testing.assert_close(rr, beta * (pl - rl))
    assert not cr.requires_grad


def test_all_contract_names_exist():
    assert {"sigmoid", "ipo", "hinge", "simpo", "dpop"} <= set(PREFERENCE_LOSSES)


def test_cdpo_with_zero_smoothing_is_dpo():
    pw, pl, rw, rl, *_ = inputs()
    a = preference_loss("sigmoid", pw, pl, rw, rl, beta=0.3)[0]
    b = preference_loss("sigmoid", pw, pl, rw, rl, beta=0.3, label_smoothing=0.0)[0]
    torch.testing.assert_close(a, b)


def test_equal_log_ratios_give_log2():
    pw, pl, rw, rl, *_ = inputs()
    losses = preference_loss("sigmoid", pw, pw.clone(), rw, rw.clone(), beta=0.1)[0]
    torch.testing.assert_close(losses, torch.full((B,), math.log(2), dtype=torch.float64))
    # identical chosen and rejected: zero gradient for DPO
    p = pw.clone().requires_grad_(True)
    preference_loss("sigmoid", p, p, rw, rw, beta=0.1)[0].sum().backward()
    assert torch.all(p.grad == 0)


def test_small_beta_limit():
    pw, pl, rw, rl, *_ = inputs()
    beta = 1e-8
    losses = preference_loss("sigmoid", pw, pl, rw, rl, beta=beta)[0]
    h = (pw - rw) - (pl - rl)
    # −log σ(βh) = log 2 − βh/2 + O(β²)
    torch.testing.assert_close(losses, math.log(2) - beta * h / 2, rtol=0, atol=1e-12)
    assert torch.isfinite(preference_loss("ipo", pw, pl, rw, rl, beta=1e-6)[0]).all()


def test_dpo_gradient_matches_notes():
    """∇L = −β σ(r̂_l − r̂_w) [∇log π(y_w) − ∇log π(y_l)], on a tiny linear 'policy'."""
    torch.manual_seed(1)
    theta = torch.randn(6, dtype=torch.float64, requires_grad=True)
    fw, fl = torch.randn(B, 6, dtype=torch.float64), torch.randn(B, 6, dtype=torch.float64)
    rw, rl = logps(), logps()
    beta = 0.7
    pw, pl = fw @ theta - 20, fl @ theta - 20      # log π(y) linear in θ: ∇log π = features
    loss = preference_loss("sigmoid", pw, pl, rw, rl, beta=beta)[0].sum()
    (grad,) = torch.autograd.grad(loss, theta)
    r_w, r_l = beta * (pw - rw), beta * (pl - rl)
    weight = torch.sigmoid(r_l - r_w).detach()
    analytic = (-beta * weight[:, None] * (fw - fl)).sum(0)
    torch.testing.assert_close(grad, analytic)


def test_notes_dpo_loss_signature():
    pi, ref = logps(2 * B), logps(2 * B)
    yw, yl = torch.arange(B), torch.arange(B, 2 * B)
    losses, rewards = dpo_loss(pi, ref, yw, yl, beta=0.2)
    expect = preference_loss("sigmoid", pi[:B], pi[B:], ref[:B], ref[B:], beta=0.2)[0]
    torch.testing.assert_close(losses, expect)
    torch.testing.assert_close(rewards, 0.2 * (pi - ref))


def pl_reference(pol, ref, ranking, beta):
    out = []
    for b in range(pol.shape[0]):
        s = [beta * float(pol[b, j] - ref[b, j]) for j in ranking[b].tolist()]
        out.append(-sum(s[k] - math.log(sum(math.exp(x) for x in s[k:])) for k in range(len(s))))
    return torch.tensor(out, dtype=torch.float64)


def test_plackett_luce_formula_and_k2():
    pol, ref = logps(B * 4).view(B, 4), logps(B * 4).view(B, 4)
    ranking = torch.stack([torch.randperm(4) for _ in range(B)])
    torch.testing.assert_close(plackett_luce_loss(pol, ref, ranking, beta=0.3), pl_reference(pol, ref, ranking, 0.3))
    pw, pl, rw, rl, *_ = inputs()
    two = plackett_luce_loss(torch.stack([pl, pw], 1), torch.stack([rl, rw], 1),
                             torch.tensor([[1, 0]] * B), beta=0.3)
    torch.testing.assert_close(two, preference_loss("sigmoid", pw, pl, rw, rl, beta=0.3)[0])


def test_reward_losses():
    rw, rl, m = (torch.randn(B, dtype=torch.float64), torch.randn(B, dtype=torch.float64),
                 torch.rand(B, dtype=torch.float64))
    torch.testing.assert_close(pairwise_loss(rw, rl),
                               torch.tensor([-math.log(sig(float(a - b))) for a, b in zip(rw, rl)],
                                            dtype=torch.float64))
    torch.testing.assert_close(pairwise_loss(rw, rl, margin=m),
                               torch.tensor([-math.log(sig(float(a - b - c))) for a, b, c in zip(rw, rl, m)],
                                            dtype=torch.float64))
    K = 5
    r = torch.randn(B, K, dtype=torch.float64)
    ranking = torch.stack([torch.randperm(K) for _ in range(B)])
    expect = []
    for b in range(B):
        order = ranking[b].tolist()
        pairs = list(itertools.combinations(order, 2))   # (better, worse)
        expect.append(sum(-math.log(sig(float(r[b, i] - r[b, j]))) for i, j in pairs) / math.comb(K, 2))
    torch.testing.assert_close(ranking_loss(r, ranking), torch.tensor(expect, dtype=torch.float64))
    # K = 2 ranking is the pairwise loss
    torch.testing.assert_close(ranking_loss(torch.stack([rw, rl], 1), torch.tensor([[0, 1]] * B)),
                               pairwise_loss(rw, rl))
    best = torch.randint(0, K, (B,))
    expect = [-(float(r[b, best[b]]) - math.log(sum(math.exp(float(x)) for x in r[b]))) for b in range(B)]
    torch.testing.assert_close(best_of_n_loss(r, best), torch.tensor(expect, dtype=torch.float64))
    torch.testing.assert_close(centering_loss(rw, 0.01), 0.01 * rw ** 2)


def test_unknown_loss_and_missing_reference():
    x = logps()
    with pytest.raises(ValueError, match="unknown"):
        preference_loss("nope", x, x, x, x)
    with pytest.raises(ValueError, match="reference"):
        preference_loss("sigmoid", x, x, None, None)
    preference_loss("simpo", x, x, None, None, chosen_lengths=x * 0 + 3, rejected_lengths=x * 0 + 4)


def kto_reference(policy, ref, policy_kl, ref_kl, labels, beta, wd, wu):
    """KTO (Ethayarajh et al. 2024, eq. 8) element by element in float64: z₀ = max(0, mean(π_KL − ref_KL)),
    loss λ_D(1 − σ(β(r − z₀))) for desirable, λ_U(1 − σ(β(z₀ − r))) for undesirable, r = π − ref."""
    z0 = max(0.0, sum(float(a - b) for a, b in zip(policy_kl, ref_kl)) / len(policy_kl))
    out = []
    for p, r, good in zip(policy, ref, labels):
        ratio = float(p - r)
        out.append(wd * (1 - sig(beta * (ratio - z0))) if good else wu * (1 - sig(beta * (z0 - ratio))))
    return torch.tensor(out, dtype=torch.float64), z0


@pytest.mark.parametrize("beta,wd,wu,shift", [(0.1, 1.0, 1.0, 0.0), (0.5, 1.0, 1.33, 5.0), (2.0, 0.8, 1.2, -5.0)])
def test_kto_equals_formula(beta, wd, wu, shift):
    from preftune.losses.preference import kto_loss, kto_reference_point
    policy, ref, policy_kl = logps(), logps(), logps()
    ref_kl = policy_kl - shift
    labels = torch.rand(B) < 0.5
    z0 = kto_reference_point(policy_kl, ref_kl)
    losses, rewards = kto_loss(policy, ref, labels, z0, beta=beta, desirable_weight=wd, undesirable_weight=wu)
    expected, expected_z0 = kto_reference(policy, ref, policy_kl, ref_kl, labels.tolist(), beta, wd, wu)
    assert float(z0) == pytest.approx(expected_z0, abs=1e-12)
    assert (float(z0) == 0) == (shift <= 0)           # the KL estimate is clamped at zero
    torch.testing.assert_close(losses, expected, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(rewards, beta * (policy - ref))
    # equal policy and reference: every loss is λ·(1 − σ(0)) = λ/2
    half, _ = kto_loss(ref, ref, labels, torch.tensor(0.0, dtype=torch.float64), beta=beta,
                       desirable_weight=wd, undesirable_weight=wu)
    torch.testing.assert_close(half, torch.where(labels, wd, wu).double() / 2)


def test_kto_equals_trl_on_fixed_inputs():
    """TRL 1.16's KTOTrainer loss, KL term and rewards on fixed log-probs (tests/data/trl_1.16_kto.json)."""
    import json
    from pathlib import Path
    from preftune.losses.preference import kto_loss, kto_reference_point
    cases = json.loads((Path(__file__).parent / "data" / "trl_1.16_kto.json").read_text())["cases"]
    for case in cases:
        t = {k: torch.tensor(case[k]) for k in ("policy", "ref", "policy_kl", "ref_kl", "labels")}
        z0 = kto_reference_point(t["policy_kl"], t["ref_kl"])
        losses, rewards = kto_loss(t["policy"], t["ref"], t["labels"], z0, beta=case["beta"],
                                   desirable_weight=case["desirable_weight"],
                                   undesirable_weight=case["undesirable_weight"])
        trl = case["trl"]
        assert float(losses.mean()) == pytest.approx(trl["loss"], rel=1e-6)
        assert float(z0) == pytest.approx(trl["kl"], rel=1e-6, abs=1e-7)
        assert float(rewards[t["labels"]].mean()) == pytest.approx(trl["rewards/chosen"], rel=1e-5)
        assert float(rewards[~t["labels"]].mean()) == pytest.approx(trl["rewards/rejected"], rel=1e-5)
