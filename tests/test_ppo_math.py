"""PPO arithmetic against plain-loop references and hand-computed numbers."""

import math

import pytest
import torch

from instructgpt.losses import (AdaptiveKLController, ema_update, explained_variance, gae, kl_estimate, leave_one_out,
                                policy_loss,
                                shape_rewards, value_loss, whiten)


def gae_reference(rewards, values, gamma, lam):
    """Textbook GAE for one episode (python lists), next value after the end = 0."""
    T = len(rewards)
    adv = [0.0] * T
    last = 0.0
    for t in reversed(range(T)):
        nv = values[t + 1] if t + 1 < T else 0.0
        delta = rewards[t] + gamma * nv - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv, [a + v for a, v in zip(adv, values)]


def test_gae_matches_plain_loop_on_random_padded_batches():
    g = torch.Generator().manual_seed(0)
    B, T = 6, 9
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = [9, 1, 4, 7, 0, 5]
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in lengths], dtype=torch.float64)
    for gamma, lam in [(1.0, 0.95), (0.9, 0.5), (0.99, 1.0)]:
        adv, ret = gae(rewards, values, mask, gamma, lam)
        for b, n in enumerate(lengths):
            ref_adv, ref_ret = gae_reference(rewards[b, :n].tolist(), values[b, :n].tolist(), gamma, lam)
            assert torch.allclose(adv[b, :n], torch.tensor(ref_adv, dtype=torch.float64))
            assert torch.allclose(ret[b, :n], torch.tensor(ref_ret, dtype=torch.float64))
            assert torch.all(adv[b, n:] == 0) and torch.all(ret[b, n:] == 0)


def test_gae_hand_examples():
    # gamma = 0.5, lam = 0: advantage = one-step TD error r_t + 0.5 V_{t+1} - V_t
    r = torch.tensor([[0.0, 0.0, 0.0, -4.0]])
    v = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    m = torch.ones(1, 4)
    adv, ret = gae(r, v, m, gamma=0.5, lam=0.0)
    assert adv.tolist() == [[0.0, -0.5, -1.0, -8.0]]  # 0+1-1, 0+1.5-2, 0+2-3, -4+0-4
    assert ret.tolist() == [[1.0, 1.5, 2.0, -4.0]]
    # gamma = 1, lam = 1, values 0: advantage = reward-to-go
    adv, ret = gae(r, torch.zeros(1, 4), m, gamma=1.0, lam=1.0)
    assert adv.tolist() == [[-4.0, -4.0, -4.0, -4.0]]
    # gamma = 0.5, lam = 1, values 0: discounted return
    adv, _ = gae(r, torch.zeros(1, 4), m, gamma=0.5, lam=1.0)
    assert adv.tolist() == [[-0.5, -1.0, -2.0, -4.0]]


def test_reward_placement_kl_per_token_score_on_last_real_token():
    logp = torch.tensor([[-1.0, -2.0, -1.5, 0.0], [-0.5, -0.5, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -1.5, 0.0], [-1.0, -0.25, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    kl = kl_estimate(logp, ref, "k1") * mask
    rewards = shape_rewards(torch.tensor([2.0, -1.0]), kl, mask, kl_coef=0.1)
    expected = torch.tensor([[-0.1 * 0.5, -0.1 * -1.0, 0.0 + 2.0, 0.0],
                             [-0.1 * 0.5, -0.1 * -0.25 - 1.0, 0.0, 0.0]])
    assert torch.allclose(rewards, expected)
    # an empty response gets nothing anywhere
    r = shape_rewards(torch.tensor([5.0]), torch.zeros(1, 3), torch.zeros(1, 3), 0.1)
    assert torch.all(r == 0)


def test_kl_estimators():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    lr = math.log(2.0)
    assert math.isclose(kl_estimate(logp, ref, "k1").item(), lr, rel_tol=1e-6)
    assert math.isclose(kl_estimate(logp, ref, "k2").item(), 0.5 * lr * lr, rel_tol=1e-6)
    assert math.isclose(kl_estimate(logp, ref, "k3").item(), (0.5 - 1) + lr, rel_tol=1e-6)
    assert kl_estimate(ref, logp, "k3").item() >= 0


def test_clipped_policy_loss_hand_values():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))   # ratios 1.5, 0.5, 1.1
    adv = torch.tensor([[1.0, 1.0, -2.0]])
    mask = torch.ones(1, 3)
    loss, stats = policy_loss(new, old, adv, mask, cliprange=0.2)
    # token 1: max(-1.5, -1.2) = -1.2 (clipped); token 2: max(-0.5, -0.8) = -0.5; token 3: max(2.2, 2.2) = 2.2
    assert math.isclose(loss.item(), (-1.2 - 0.5 + 2.2) / 3, rel_tol=1e-6)
    assert math.isclose(stats["clipfrac"].item(), 1 / 3, rel_tol=1e-6)
    assert math.isclose(stats["ratio_max"].item(), 1.5, rel_tol=1e-6)


def test_clipped_value_loss_hand_values():
    old = torch.tensor([[0.0, 0.0]])
    new = torch.tensor([[1.0, 0.1]])
    ret = torch.tensor([[2.0, -1.0]])
    loss, stats = value_loss(new, old, ret, torch.ones(1, 2), cliprange_value=0.2)
    # token 1: unclipped (1-2)^2 = 1, clipped (0.2-2)^2 = 3.24 -> 3.24; token 2: (0.1+1)^2 = 1.21 both
    assert math.isclose(loss.item(), 0.5 * (3.24 + 1.21) / 2, rel_tol=1e-6)
    assert math.isclose(stats["vf_clipfrac"].item(), 0.5, rel_tol=1e-6)


def test_ema_update_formula():
    ema = [torch.tensor([1.0, 2.0]), torch.tensor([[0.0]])]
    new = [torch.tensor([3.0, 0.0]), torch.tensor([[10.0]])]
    ema_update(ema, new, 0.992)
    assert torch.allclose(ema[0], torch.tensor([0.992 * 1 + 0.008 * 3, 0.992 * 2 + 0.0]))
    assert torch.allclose(ema[1], torch.tensor([[0.08]]))


def test_adaptive_kl_controller_moves_the_right_way():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(12.0, 1000)  # KL too high -> stronger penalty (error clipped at +0.2)
    assert math.isclose(ctl.value, 0.1 * (1 + 0.2 * 1000 / 10000))
    before = ctl.value
    ctl.update(3.0, 1000)   # KL too low -> weaker penalty
    assert ctl.value < before
    v = ctl.value
    ctl.update(6.0, 1000)   # on target -> unchanged
    assert math.isclose(ctl.value, v)


def test_whiten_zero_mean_unit_variance_on_masked_entries():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, 0.0, -50.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    w = whiten(x, m)
    vals = w[m.bool()]
    assert abs(vals.mean().item()) < 1e-6
    assert abs(vals.var().item() - 1.0) < 1e-4
    assert torch.all(w[~m.bool()] == 0)


def test_whiten_and_explained_variance_match_hand_computed_numbers():
    # masked entries 1, 3, 5: mean 3, unbiased variance ((-2)^2 + 0 + 2^2) / 2 = 4, std 2
    x = torch.tensor([[1.0, 3.0, 99.0], [5.0, -7.0, 0.0]])
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    want = torch.tensor([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(whiten(x, m, eps=0.0), want)
    # without the mean shift: (x - 3) / 2 + 3
    torch.testing.assert_close(whiten(x, m, shift_mean=False, eps=0.0),
                               torch.tensor([[2.0, 3.0, 0.0], [4.0, 0.0, 0.0]]))
    # returns 1, 3, 5 (variance 4); values 1, 3, 3: residuals 0, 0, 2 with mean 2/3 and unbiased
    # variance ((2/3)^2 * 2 + (4/3)^2) / 2 = 4/3; explained variance 1 - (4/3) / 4 = 2/3
    values = torch.tensor([[1.0, 3.0, 50.0], [3.0, 8.0, 0.0]])
    assert explained_variance(values, x, m) == pytest.approx(2 / 3, abs=1e-9)
    assert explained_variance(x, x, m) == pytest.approx(1.0)


def test_leave_one_out_hand_values():
    """Each return against the mean of its group's others: 1 vs (2+3+4)/3 = 3, 2 vs 8/3, 3 vs 7/3, 4 vs 2; a group
    of equal returns carries no signal; with k=2 each response is judged against the other alone."""
    adv = leave_one_out(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0]), 4)
    torch.testing.assert_close(adv, torch.tensor([-2.0, -2 / 3, 2 / 3, 2.0, 0.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(leave_one_out(torch.tensor([1.0, 3.0, -1.0, 0.5]), 2), torch.tensor([-2.0, 2.0, -1.5, 1.5]))
