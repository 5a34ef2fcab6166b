"""Issue 16: the normalized objective's step size against DPO's (#7), sparse token weights when one reply is a
subsequence of the other (#8)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers_objectives import pref_feature, tiny_llama

from tandem.data import collate
from tandem.objectives.dpo import dpo_loss
from tandem.objectives.normalized import Normalized
from tandem.objectives.sparse_token import SparseToken, token_weights

BETA = 0.1
G_W, G_L = torch.tensor([3.0, 4.0]), torch.tensor([5.0, 0.0])  # equal norms (5), different directions


class LinearPair(Normalized):
    """Normalized with log pi(y_w) = g_w . theta - 1 and log pi(y_l) = g_l . theta - 2: gradients known exactly."""

    def __init__(self, theta, **kw):
        super().__init__(**kw)
        self.theta = theta

    def _pair_stats(self, model, batch, b):
        logp = torch.stack([G_W @ self.theta - 1.0, G_L @ self.theta - 2.0])
        sq = torch.stack([G_W @ G_W, G_L @ G_L]).double()
        return logp, sq, (G_W @ G_L).double()[None]


BATCH = {"seq_ids": torch.tensor([[0, 1]]), "ref_chosen_logp": torch.tensor([-0.5]),
         "ref_rejected_logp": torch.tensor([-3.0])}


def normalized_grad(rescale):
    theta = torch.tensor([0.1, -0.2], requires_grad=True)
    loss, _ = LinearPair(theta, beta=BETA, rescale=rescale)(None, BATCH)
    loss.backward()
    return theta.grad


def dpo_grad():
    theta = torch.tensor([0.1, -0.2], requires_grad=True)
    h = ((G_W @ theta - 1.0) - -0.5) - ((G_L @ theta - 2.0) - -3.0)
    dpo_loss(h, BETA).sum().backward()
    return theta.grad


@pytest.mark.parametrize("rescale, ratio", [("dpo", 1.0), ("norm", 1 / BETA), (True, 1 / BETA),
                                            ("none", 1 / (BETA * 5.0)), (False, 1 / (BETA * 5.0))])
def test_gradient_norm_ratio_to_dpo_on_an_equal_norm_pair(rescale, ratio):
    g, d = normalized_grad(rescale), dpo_grad()
    assert float(g.norm() / d.norm()) == pytest.approx(ratio, rel=1e-6)
    assert float(torch.dot(g, d) / (g.norm() * d.norm())) == pytest.approx(1.0, abs=1e-6)  # same direction here


def test_rescale_dpo_is_beta_times_the_default_on_a_model():
    f = pref_feature([1, 2, 3, 4], [5, 6, 7, 8], [5, 6, 7, 8, 9, 10])
    feats = [{**f, "ref_chosen_logp": -20.0, "ref_rejected_logp": -30.0}]
    out = {}
    for mode in ("norm", "dpo"):
        model = tiny_llama(0)
        loss, _ = Normalized(beta=0.5, rescale=mode)(model, collate(feats, mode="pack", pad_id=0))
        loss.backward()
        out[mode] = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert torch.allclose(out["dpo"], 0.5 * out["norm"], rtol=1e-5, atol=1e-8)


def test_rescale_settings_are_checked():
    with pytest.raises(ValueError, match="rescale"):
        Normalized(rescale="half")
    with pytest.raises(ValueError, match="beta"):
        Normalized(beta=None, rescale="dpo")
    assert Normalized(rescale=True).rescale == "norm" and Normalized(rescale=False).rescale == "none"


# ---- sparse token ----------------------------------------------------------------------------------------------

def test_a_reply_that_is_a_subsequence_of_the_other_falls_back_to_uniform_weights():
    # pair 0: chosen [5, 6] lies inside rejected [5, 9, 6] (all chosen tokens shared); pair 1 is ordinary
    ids = [5, 6, 1, 2, 5, 9, 6, 1, 3]
    seqs = [0, 0, 1, 1, 2, 2, 2, 3, 3]
    assert token_weights(ids, seqs, 2) == [1, 1, 0, 1, 0, 1, 0, 0, 1]
    # the mirror case: the rejected reply is the chosen one minus a token
    assert token_weights([5, 9, 6, 5, 6], [0, 0, 0, 1, 1], 1) == [0, 1, 0, 1, 1]
    # identical replies: both uniform
    assert token_weights([5, 6, 5, 6], [0, 0, 1, 1], 1, shared_weight=0.25) == [1, 1, 1, 1]


class FixedTokens(SparseToken):
    def __init__(self, logps, seqs, ids, **kw):
        super().__init__(**kw)
        self.t = (torch.tensor(logps, requires_grad=True), torch.tensor(seqs), torch.tensor(ids))

    def _tokens(self, model, batch):
        return self.t


def test_subsequence_chosen_reply_gets_a_gradient():
    # chosen [5, 6], rejected [5, 9, 6]
    obj = FixedTokens([-1.0, -2.0, -1.0, -3.0, -0.5], [0, 0, 1, 1, 1], [5, 6, 5, 9, 6], beta=0.5)
    loss, m = obj(None, {"ref_chosen_logp": torch.tensor([-2.5]), "ref_rejected_logp": torch.tensor([-2.0])})
    h = (-3.0 - -2.5) - (-3.0 - -2.0)  # chosen: all its tokens; rejected: only the inserted token 9
    assert float(loss) == pytest.approx(-math.log(1 / (1 + math.exp(-0.5 * h))))
    assert m["token_weight/chosen"] == 1.0
    loss.backward()
    d = 0.5 / (1 + math.exp(0.5 * h))  # beta sigmoid(-beta h)
    assert obj.t[0].grad.tolist() == pytest.approx([-d, -d, 0.0, d, 0.0])
