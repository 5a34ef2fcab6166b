"""GRPO and RLOO maths against hand-computed values on tiny tensors: group advantages for each scale_rewards, the k3
KL, the clipped ratio, each loss_type, the RLOO leave-one-out baseline (KL in the reward and in the loss)."""

from __future__ import annotations

import math

import pytest
import torch

from tandem.objectives.grpo import GRPO, aggregate, clipped_objective, group_advantages, k3
from tandem.objectives.rloo import RLOO, rloo_advantages

NAN = math.nan
R = torch.tensor([1.0, 3.0, 2.0, 2.0])  # two prompts, G = 2: groups [1, 3] (std sqrt 2) and [2, 2] (std 0)


def close(a: torch.Tensor, b: list[float], tol: float = 1e-6) -> bool:
    return torch.allclose(a.double(), torch.tensor(b, dtype=torch.float64), atol=tol)


def test_group_advantages_scale_group():
    s = 2**0.5 + 1e-4  # unbiased std of [1, 3] = sqrt(((1-2)^2 + (3-2)^2) / 1), plus TRL's 1e-4
    assert close(group_advantages(R, 2, "group"), [-1 / s, 1 / s, 0.0, 0.0])


def test_group_advantages_scale_batch():
    s = (2 / 3) ** 0.5 + 1e-4  # std of [1, 3, 2, 2]: squared deviations 1 + 1 + 0 + 0 over n - 1 = 3
    assert close(group_advantages(R, 2, "batch"), [-1 / s, 1 / s, 0.0, 0.0])
    assert close(group_advantages(R, 2, "batch", batch_std=4.0), [-1 / 4.0001, 1 / 4.0001, 0.0, 0.0])  # all processes


def test_group_advantages_scale_none_is_dr_grpo():
    assert close(group_advantages(R, 2, "none"), [-1.0, 1.0, 0.0, 0.0])
    assert close(group_advantages(torch.tensor([0.5, 1.5, 4.0, 0.0]), 2, "none"), [-0.5, 0.5, 2.0, -2.0])


def test_unscored_rows_get_zero_advantage():
    r = torch.tensor([1.0, NAN, 2.0, 4.0])  # group 1: one scored row (no std); group 2: mean 3, std sqrt 2
    s = 2**0.5 + 1e-4
    assert close(group_advantages(r, 2, "group"), [0.0, 0.0, -1 / s, 1 / s])
    assert close(group_advantages(r, 2, "none"), [0.0, 0.0, -1.0, 1.0])  # 1 - mean(1) = 0; NaN -> 0


def test_k3_kl():
    logp, ref = torch.log(torch.tensor([0.5, 0.25])), torch.log(torch.tensor([0.25, 0.25]))
    # d = ref - logp = log(1/2): exp(d) - d - 1 = 0.5 + 0.693147 - 1; and 0 where the two agree
    assert close(k3(logp, ref), [0.5 + math.log(2) - 1, 0.0])


def test_clipped_ratio_and_clip_masks():
    ratio = torch.tensor([1.5, 1.5, 0.5, 0.5])
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])
    loss, clips = clipped_objective(torch.log(ratio), torch.zeros(4), adv, 0.2, 0.2)
    # -min(rho A, clip(rho) A): A=1, rho 1.5 -> -1.2; A=-1, rho 1.5 -> 1.5; A=-1, rho 0.5 -> 0.8; A=1, rho 0.5 -> -0.5
    assert close(loss, [-1.2, 1.5, 0.8, -0.5])
    assert clips["high"].tolist() == [True, False, False, False] and clips["low"].tolist() == [False, False, True, False]
    loss, _ = clipped_objective(torch.log(ratio), torch.zeros(4), adv, 0.2, 0.28)  # DAPO's clip-higher
    assert close(loss, [-1.28, 1.5, 0.8, -0.5])


PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize("loss_type, expected", [
    ("grpo", (6 / 3 + 4 / 1) / 2),  # mean over sequences of each sequence's token mean
    ("dr_grpo", (6 + 4) / (2 * 4)),  # sum over tokens / (sequences * max_completion_length = 4)
    ("dapo", (6 + 4) / 5),  # sum over tokens / N (N = 5 given)
])
def test_each_loss_type_aggregates(loss_type, expected):
    assert float(aggregate(PER_TOKEN, MASK, loss_type, max_len=4, n_tokens=5.0)) == pytest.approx(expected)


@pytest.mark.parametrize("loss_type, expected", [("grpo", (-1 + 2) / 2), ("dr_grpo", (-3 + 2) / (2 * 3)),
                                                 ("dapo", (-3 + 2) / 4)])
def test_grpo_loss_at_ratio_one(loss_type, expected):
    g = GRPO(reward_funcs=["helpers_grpo:count_e"], num_generations=2, max_completion_length=3, loss_type=loss_type)
    logp = torch.log(torch.full((2, 3), 0.5))
    loss, stats = g.loss(logp, logp, None, torch.tensor([1.0, -2.0]), MASK, n_tokens=4.0)
    # rho = 1: per-token loss -A: row 1 = -1 on 3 tokens, row 2 = +2 on 1 token
    assert float(loss) == pytest.approx(expected) and "kl" not in stats and stats["clip_ratio/region"] == 0.0


def test_grpo_loss_adds_beta_k3():
    g = GRPO(reward_funcs=["helpers_grpo:count_e"], num_generations=2, max_completion_length=3, loss_type="grpo", beta=0.1)
    logp = torch.log(torch.full((2, 3), 0.5))
    ref = torch.log(torch.full((2, 3), 0.25))
    loss, stats = g.loss(logp, logp, ref, torch.tensor([1.0, -2.0]), MASK, n_tokens=4.0)
    kl = 0.5 + math.log(2) - 1  # k3 with d = log(0.25 / 0.5) = -log 2: exp(d) - d - 1
    assert stats["kl"] == pytest.approx(kl) and float(loss) == pytest.approx(0.5 + 0.1 * kl)


def test_rloo_leave_one_out_baseline():
    # b_i = (sum - r_i) / (G - 1): [ (9-1)/2, (9-3)/2, (9-5)/2 ] = [4, 3, 2]
    assert close(rloo_advantages(torch.tensor([1.0, 3.0, 5.0]), 3), [-3.0, 0.0, 3.0])
    # an unscored row leaves its siblings' baselines: n = 2, b_0 = 5, b_2 = 1
    assert close(rloo_advantages(torch.tensor([1.0, NAN, 5.0]), 3), [-4.0, 0.0, 4.0])
    s = 3.0 + 1e-4  # std of [-3, 0, 3] = sqrt(18 / 2)
    assert close(rloo_advantages(torch.tensor([1.0, 3.0, 5.0]), 3, normalize=True), [-3 / s, 0.0, 3 / s])


def test_rloo_kl_in_reward_and_in_loss():
    r = RLOO(reward_funcs=["helpers_grpo:count_e"], num_generations=3, beta=0.5, kl_in_reward=True)
    # r - beta * sum_t (logp_old - ref): [1 - 0.5 * 2, 3, 5] = [0, 3, 5] -> baselines [4, 2.5, 1.5]
    assert close(r.advantages(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([2.0, 0.0, 0.0]), None), [-4.0, 0.5, 3.5])
    assert r.needs_old_logp() and not r.kl_in_loss()
    logp = torch.log(torch.full((2, 3), 0.5))
    loss, _ = r.loss(logp, logp, None, torch.tensor([1.0, -2.0]), MASK, 4.0)
    assert float(loss) == pytest.approx((-1 + 2) / 2)  # sequence-level ratio 1: mean_i -A_i
    old = logp.clone()
    old[0, 0] = old[0, 0] - math.log(1.5)  # sequence 0: sum of log-ratios log 1.5 -> rho 1.5, clipped at 1.2
    loss, stats = r.loss(logp, old, None, torch.tensor([1.0, -2.0]), MASK, 4.0)
    assert float(loss) == pytest.approx((-1.2 + 2) / 2) and stats["clip_ratio/high"] == 0.5
    in_loss = RLOO(reward_funcs=["helpers_grpo:count_e"], num_generations=3, beta=0.5, kl_in_reward=False)
    ref = torch.log(torch.full((2, 3), 0.25))
    loss, stats = in_loss.loss(logp, logp, ref, torch.tensor([1.0, -2.0]), MASK, 4.0)
    kl = 0.5 + math.log(2) - 1
    assert float(loss) == pytest.approx(0.5 + 0.5 * kl) and stats["kl"] == pytest.approx(kl)
    assert close(in_loss.advantages(torch.tensor([1.0, 3.0, 5.0]), None, None), [-3.0, 0.0, 3.0])


@pytest.mark.parametrize("bad, match", [({"num_generations": 1}, "num_generations=1"),
                                         ({"scale_rewards": "grp"}, "scale_rewards 'grp'"),
                                         ({"loss_type": "bnpo"}, "loss_type 'bnpo'"),
                                         ({"epsilon": 0.0}, "epsilon=0.0"),
                                         ({"reward_funcs": None}, "reward_funcs is required"),
                                         ({"reward_weights": [1.0, 2.0]}, "2 entries for 1 reward_funcs")])
def test_grpo_settings_are_checked(bad, match):
    kw = {"reward_funcs": ["helpers_grpo:count_e"], **bad}
    with pytest.raises(ValueError, match=match):
        GRPO(**kw)


def test_trl_boolean_scale_rewards():
    assert GRPO(reward_funcs=["helpers_grpo:count_e"], scale_rewards=False).scale_rewards == "none"
    assert GRPO(reward_funcs=["helpers_grpo:count_e"], scale_rewards=True).scale_rewards == "group"
