"""PPO pieces against their formulas: GAE recurrence, KL estimators, clipped losses."""
import math

import pytest
import torch

from preftune.losses.ppo import gae, kl_estimate, policy_loss, value_loss, whiten


def gae_by_hand(r, v, mask, gamma, lam):
    B, T = r.shape
    adv = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        idx = [t for t in range(T) if mask[b, t]]
        last = 0.0
        for n, t in reversed(list(enumerate(idx))):
            nv = float(v[b, idx[n + 1]]) if n + 1 < len(idx) else 0.0
            delta = float(r[b, t]) + gamma * nv - float(v[b, t])
            last = delta + gamma * lam * last
            adv[b, t] = last
    return adv, (adv + v) * mask


def test_gae_small_example_by_hand():
    r = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    v = torch.tensor([[0.5, 0.6, 0.7]], dtype=torch.float64)
    m = torch.ones(1, 3)
    adv, ret = gae(r, v, m, gamma=1.0, lam=1.0)
    # λ = γ = 1: A_t = Σ r − V_t
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.4, 0.3]], dtype=torch.float64))
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 1.0]], dtype=torch.float64))
    adv, _ = gae(r, v, m, gamma=0.9, lam=0.0)   # λ = 0: A_t = δ_t
    torch.testing.assert_close(adv, torch.tensor([[0.9 * 0.6 - 0.5, 0.9 * 0.7 - 0.6, 1 - 0.7]], dtype=torch.float64))


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.9), (0.5, 0.0), (1.0, 1.0), (0.0, 0.5)])
def test_gae_with_masks(gamma, lam):
    torch.manual_seed(0)
    B, T = 5, 9
    r, v = torch.randn(B, T, dtype=torch.float64), torch.randn(B, T, dtype=torch.float64)
    lengths = torch.tensor([9, 1, 4, 7, 3])
    mask = (torch.arange(T)[None] < lengths[:, None]).double()
    mask[3, 2] = 0  # a hole inside a response is skipped, not a boundary
    adv, ret = gae(r, v, mask, gamma=gamma, lam=lam)
    e_adv, e_ret = gae_by_hand(r, v, mask, gamma, lam)
    torch.testing.assert_close(adv, e_adv)
    torch.testing.assert_close(ret, e_ret)
    assert (adv[mask == 0] == 0).all()


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_estimators_against_exact_kl(kind):
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(6, dtype=torch.float64) * 0.5, 0)
    q = torch.softmax(torch.randn(6, dtype=torch.float64) * 0.5, 0)
    exact = float((p * (p / q).log()).sum())
    x = torch.multinomial(p, 400_000, replacement=True)
    est = kl_estimate(p.log()[x], q.log()[x], kind)
    mean, se = float(est.mean()), float(est.std()) / math.sqrt(len(x))
    if kind in ("k1", "k3"):
        assert abs(mean - exact) < 5 * se + 1e-4, (mean, exact)           # unbiased
    else:
        # k2 = E[½ (log q/p)²]: its expectation, computed exactly, ≈ KL to second order
        k2_exact = float((p * 0.5 * (q / p).log() ** 2).sum())
        assert abs(mean - k2_exact) < 5 * se + 1e-4
        assert abs(k2_exact - exact) < 0.1 * exact + 1e-3
    if kind != "k1":
        assert (est >= 0).all()


def test_kl_identical_is_zero():
    lp = torch.log_softmax(torch.randn(4, 7), -1)
    for kind in ("k1", "k2", "k3"):
        assert torch.all(kl_estimate(lp, lp, kind) == 0)


def test_clipped_surrogate_and_value_loss():
    torch.manual_seed(0)
    lp, old, adv = (torch.randn(50, dtype=torch.float64) * 0.3, torch.randn(50, dtype=torch.float64) * 0.3,
                    torch.randn(50, dtype=torch.float64))
    loss, clipped = policy_loss(lp, old, adv, clip=0.2)
    for i in range(50):
        ratio = math.exp(float(lp[i] - old[i]))
        a = float(adv[i])
        expect = max(-a * ratio, -a * min(max(ratio, 0.8), 1.2))
        assert abs(float(loss[i]) - expect) < 1e-12
    v, ov, ret = (torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64),
                  torch.randn(50, dtype=torch.float64))
    vl = value_loss(v, ov, ret, clip=0.2)
    for i in range(50):
        vc = float(ov[i]) + min(max(float(v[i] - ov[i]), -0.2), 0.2)
        assert abs(float(vl[i]) - 0.5 * max((float(v[i] - ret[i])) ** 2, (vc - float(ret[i])) ** 2)) < 1e-12


def test_whiten():
    x = torch.randn(4, 6, dtype=torch.float64) * 3 + 2
    m = torch.ones(4, 6)
    m[0, 3:] = 0
    w = whiten(x, m)
    sel = w[m.bool()]
    assert abs(float(sel.mean())) < 1e-9 and abs(float(sel.var(unbiased=False)) - 1) < 1e-6
    assert (w[~m.bool()] == 0).all()
