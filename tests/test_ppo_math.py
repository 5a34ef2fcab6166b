"""PPO formulas against hand computations on tiny tensors (tandem.objectives.ppo.ppo_math)."""

from __future__ import annotations

import math

import pytest
import torch

from tandem.objectives.ppo import ppo_math as pm


def test_gae_and_returns_match_hand_computation():
    # row 0: 3 tokens; row 1: 2 tokens, then a padded column whose reward/value must not leak in
    r = torch.tensor([[0.1, -0.2, 1.0], [0.5, 2.0, 5.0]])
    v = torch.tensor([[0.5, 0.4, 0.3], [1.0, 0.5, 7.0]])
    m = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = pm.gae(r, v, m, gamma=0.9, lam=0.8)
    # row 0: d2 = 1.0 - 0.3 = 0.7; d1 = -0.2 + 0.9*0.3 - 0.4 = -0.33, A1 = -0.33 + 0.72*0.7 = 0.174
    #        d0 = 0.1 + 0.9*0.4 - 0.5 = -0.04, A0 = -0.04 + 0.72*0.174 = 0.08528
    # row 1: A1 = 2.0 - 0.5 = 1.5; d0 = 0.5 + 0.9*0.5 - 1.0 = -0.05, A0 = -0.05 + 0.72*1.5 = 1.03
    expected = torch.tensor([[0.08528, 0.174, 0.7], [1.03, 1.5, 0.0]])
    assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[0.58528, 0.574, 1.0], [2.03, 2.0, 0.0]]), atol=1e-6)


def test_gae_gamma_one_lambda_one_is_reward_to_go_minus_value():
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    v = torch.tensor([[0.5, -1.0, 2.0, 0.25]])
    adv, ret = pm.gae(r, v, torch.ones(1, 4), gamma=1.0, lam=1.0)
    assert torch.allclose(ret, torch.tensor([[10.0, 9.0, 7.0, 4.0]]))
    assert torch.allclose(adv, ret - v)


def test_kl_shaped_reward_puts_score_on_last_token():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -9.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -1.0, -3.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    r, kl = pm.shaped_rewards(logp, ref, torch.tensor([2.0, -1.0]), mask, beta=0.1)
    # kl row 0 = [0.5, -1, 0] -> r = [-0.05, 0.1, 0 + 2]; row 1 kl = [1, 0, (pad)] -> r = [-0.1, 0 - 1, 0]
    assert torch.allclose(kl, torch.tensor([[0.5, -1.0, 0.0], [1.0, 0.0, 0.0]]))
    assert torch.allclose(r, torch.tensor([[-0.05, 0.1, 2.0], [-0.1, -1.0, 0.0]]))


def test_empty_response_is_an_error():
    with pytest.raises(ValueError, match="no token"):
        pm.shaped_rewards(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1), torch.zeros(1, 2), 0.1)


def test_whitening_uses_masked_entries_only():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 0.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]])
    w = pm.whiten(x, m)
    # values 1..4: mean 2.5, unbiased var 5/3
    std = math.sqrt(5 / 3 + 1e-8)
    expected = torch.tensor([[-1.5 / std, -0.5 / std, 0.5 / std], [1.5 / std, 0.0, 0.0]])
    assert torch.allclose(w, expected, atol=1e-6)
    kept = pm.whiten(x, m, shift_mean=False)
    assert torch.allclose(kept[0, 0], torch.tensor(-1.5 / std + 2.5), atol=1e-6)


@pytest.mark.parametrize(
    "ratio, adv, loss, clipped",
    [
        (1.2, 1.0, -1.2, 0.0),   # at the clip edge: both terms equal, not counted as clipped
        (1.5, 1.0, -1.2, 1.0),   # beyond 1 + eps with A > 0: the clipped term wins
        (1.5, -1.0, 1.5, 0.0),   # beyond 1 + eps with A < 0: the unclipped (pessimistic) term wins
        (0.5, -1.0, 0.8, 1.0),   # below 1 - eps with A < 0: clipped at 0.8
        (0.5, 1.0, -0.5, 0.0),   # below 1 - eps with A > 0: unclipped
    ],
)
def test_clipped_policy_loss(ratio, adv, loss, clipped):
    old = torch.tensor([[-1.0]])
    logp = (old + math.log(ratio)).requires_grad_(True)
    out, st = pm.policy_loss(logp, old, torch.tensor([[adv]]), torch.ones(1, 1), clip=0.2)
    assert float(out.detach()) == pytest.approx(loss, abs=1e-6)
    assert float(st["clip_frac"]) == clipped
    assert float(st["approx_kl"]) == pytest.approx(0.5 * math.log(ratio) ** 2, abs=1e-6)
    out.backward()
    # d/dlogp of -A * ratio is -A * ratio; a clipped term has zero gradient
    assert float(logp.grad) == pytest.approx(0.0 if clipped else -adv * ratio, abs=1e-6)


def test_policy_loss_is_token_mean_over_mask():
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.2, 1.5, 9.0]]))
    out, st = pm.policy_loss(logp, old, torch.ones(1, 3), torch.tensor([[1, 1, 0]]), clip=0.2)
    assert float(out) == pytest.approx((-1.2 - 1.2) / 2)
    assert float(st["clip_frac"]) == pytest.approx(0.5)


def test_clipped_value_loss():
    v = torch.tensor([[1.0, 0.6, 50.0]])
    old = torch.tensor([[0.5, 0.5, 0.0]])
    ret = torch.tensor([[2.0, 0.0, 0.0]])
    out, st = pm.value_loss(v, old, ret, torch.tensor([[1, 1, 0]]), clip=0.2)
    # token 0: V_clip = 0.7, max((1-2)^2, (0.7-2)^2) = 1.69; token 1: V within range, 0.36; 0.5 * mean = 0.5125
    assert float(out) == pytest.approx(0.5125)
    assert float(st["vf_clip_frac"]) == pytest.approx(0.5)


def test_entropy_and_explained_variance():
    assert torch.allclose(pm.entropy_from_logits(torch.zeros(2, 4)), torch.full((2,), math.log(4)))
    assert float(pm.entropy_from_logits(torch.tensor([[0.0, -1e4]]))) == pytest.approx(0.0, abs=1e-6)
    ret = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    m = torch.ones(1, 4)
    assert pm.explained_variance(ret, ret, m) == pytest.approx(1.0)
    assert pm.explained_variance(torch.zeros(1, 4), ret, m) == pytest.approx(0.0)
    # V = R - [1, -1, 1, -1]: Var(R - V) = 4/3, Var(R) = 5/3 -> 1 - 0.8 = 0.2
    assert pm.explained_variance(ret - torch.tensor([[1.0, -1.0, 1.0, -1.0]]), ret, m) == pytest.approx(0.2)
    assert math.isnan(pm.explained_variance(ret, torch.ones(1, 4), m))


def test_kl_controllers():
    fixed = pm.FixedKLController(0.05)
    fixed.update(100.0, 64)
    assert fixed.value == 0.05
    c = pm.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    c.update(6.6, 256)  # error 0.1 -> beta * (1 + 0.1 * 256 / 10000)
    assert c.value == pytest.approx(0.1 * 1.00256)
    c = pm.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    c.update(60.0, 256)  # error clipped to +0.2
    assert c.value == pytest.approx(0.1 * 1.00512)
    c = pm.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    c.update(0.0, 256)  # error clipped to -0.2
    assert c.value == pytest.approx(0.1 * (1 - 0.00512))
    with pytest.raises(ValueError, match="kl_target"):
        pm.AdaptiveKLController(0.1, target=0.0, horizon=1)
