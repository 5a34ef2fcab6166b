"""ORPO, SimPO and DPO-Positive against hand-computed values, on tiny tensors and on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch
from helpers_objectives import direct_logp, pref_feature, preference_batch_fn, tiny_llama

from tandem.objectives import Objective
from tandem.objectives.dpop import DPOP, dpop_loss
from tandem.objectives.orpo import ORPO, log_odds, orpo_loss
from tandem.objectives.registry import OBJECTIVES, build
from tandem.objectives.simpo import SimPO, simpo_loss

batch_fn = preference_batch_fn("pack")
FEATS = [pref_feature([1, 2, 3], [5, 6, 7], [5, 8]), pref_feature([4, 1], [9, 10], [11, 12, 13, 14])]


def sig(x):
    return 1 / (1 + math.exp(-x))


def hand_log_odds(avg):
    return avg - math.log(1 - math.exp(avg))


def model_logps(model, feats):
    """Summed log-probs and token counts of chosen and rejected responses from the model's full logits."""
    c = [direct_logp(model, f["chosen_input_ids"], f["chosen_labels"]) for f in feats]
    r = [direct_logp(model, f["rejected_input_ids"], f["rejected_labels"]) for f in feats]
    return c, r


# ---- ORPO ------------------------------------------------------------------------------------------------------

def test_orpo_by_hand():
    # chosen: sum -2 over 2 tokens (mean -1); rejected: sum -6 over 3 tokens (mean -2)
    s = torch.tensor([-2.0, -6.0], requires_grad=True)
    loss, sft, or_losses, ratio = orpo_loss(s, torch.tensor([2.0, 3.0]), 1, lam=0.1)
    r = hand_log_odds(-1.0) - hand_log_odds(-2.0)  # -0.5413 - (-1.8546) = 1.3133
    assert float(ratio) == pytest.approx(r)
    assert float(or_losses) == pytest.approx(-math.log(sig(r)))
    assert float(sft) == pytest.approx(1.0)  # chosen NLL per token
    assert float(loss) == pytest.approx(1.0 + 0.1 * -math.log(sig(r)))
    # gradient wrt the chosen sum: -1/2 (SFT) - 0.1 sigmoid(-r) d logodds/d avg / 2, d logodds/d avg = 1/(1-e^avg)
    loss.backward()
    want = -0.5 - 0.1 * sig(-r) * (1 / (1 - math.exp(-1.0))) / 2
    assert float(s.grad[0]) == pytest.approx(want, rel=1e-6)


def test_log_odds_is_finite_near_probability_one():
    lo = log_odds(torch.tensor([0.0, -1e-9, -50.0]))
    assert torch.isfinite(lo).all() and float(lo[2]) == pytest.approx(-50.0, abs=1e-12)


def test_orpo_on_a_model_matches_the_formula_and_needs_no_reference():
    model = tiny_llama(0)
    obj = build("orpo", lam=0.2)
    assert obj.prepare(model, FEATS, batch_fn) is FEATS
    loss, m = obj(model, batch_fn(FEATS))
    c, r = model_logps(model, FEATS)
    ratios = [hand_log_odds(cs / cn) - hand_log_odds(rs / rn) for (cs, cn), (rs, rn) in zip(c, r)]
    sft = -sum(cs for cs, _ in c) / sum(cn for _, cn in c)
    want = sft + 0.2 * sum(-math.log(sig(x)) for x in ratios) / 2
    assert float(loss) == pytest.approx(want, rel=1e-4)
    assert m["sft_loss"] == pytest.approx(sft, rel=1e-4)
    assert m["log_odds_ratio"] == pytest.approx(sum(ratios) / 2, rel=1e-4, abs=1e-5)
    assert m["chosen_logp"] == pytest.approx(sum(cs for cs, _ in c) / 2, rel=1e-4)
    assert m["rewards/accuracy"] == sum(x > 0 for x in ratios) / 2
    loss.backward()
    assert sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None) > 0


# ---- SimPO -----------------------------------------------------------------------------------------------------

def test_simpo_by_hand():
    loss = simpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), beta=2.0, gamma=1.0)
    assert float(loss) == pytest.approx(-math.log(sig(2.0 * 1.0 - 1.0)))
    assert float(simpo_loss(torch.tensor([-2.0]), torch.tensor([-1.5]), 2.5, 0.5)) == pytest.approx(
        -math.log(sig(2.5 * -0.5 - 0.5)))


def test_simpo_on_a_model_is_length_normalised_and_reference_free():
    model = tiny_llama(1)
    obj = SimPO()
    assert (obj.beta, obj.gamma) == (2.0, 1.0)
    assert obj.prepare(model, FEATS, batch_fn) is FEATS
    loss, m = obj(model, batch_fn(FEATS))
    c, r = model_logps(model, FEATS)
    margins = [2.0 * (cs / cn - rs / rn) for (cs, cn), (rs, rn) in zip(c, r)]
    assert float(loss) == pytest.approx(sum(-math.log(sig(x - 1.0)) for x in margins) / 2, rel=1e-4)
    assert m["rewards/margin"] == pytest.approx(sum(margins) / 2, rel=1e-4, abs=1e-5)
    assert m["chosen_avg_logp"] == pytest.approx(sum(cs / cn for cs, cn in c) / 2, rel=1e-4)


# ---- DPOP ------------------------------------------------------------------------------------------------------

def test_dpop_by_hand_and_its_gradient_on_the_chosen_log_prob():
    pc, pr = torch.tensor([-3.0], requires_grad=True), torch.tensor([-5.0], requires_grad=True)
    ref_c, ref_r = torch.tensor([-2.5]), torch.tensor([-4.5])
    h = (pc - ref_c) - (pr - ref_r)  # 0
    drop = torch.relu(ref_c - pc)  # 0.5
    loss = dpop_loss(h, drop, beta=0.1, lam=50.0).sum()
    assert float(loss) == pytest.approx(-math.log(sig(0.1 * (0.0 - 50 * 0.5))))
    loss.backward()
    assert float(pc.grad) == pytest.approx(-0.1 * 51 * sig(2.5))  # beta (1 + lambda) sigmoid(-arg)
    assert float(pr.grad) == pytest.approx(0.1 * sig(2.5))
    # chosen above its reference: plain DPO
    assert float(dpop_loss(torch.tensor([1.5]), torch.tensor([0.0]), 0.1, 50.0)) == pytest.approx(-math.log(sig(0.15)))


def test_dpop_on_a_model_uses_dpos_reference_pass():
    model = tiny_llama(2)
    obj = DPOP()
    assert (obj.beta, obj.lam) == (0.1, 50.0)
    prepared = obj.prepare(model, FEATS, batch_fn)
    loss, m = obj(model, batch_fn(prepared))
    assert float(loss) == pytest.approx(math.log(2), abs=1e-5) and m["dpop/chosen_drop"] == pytest.approx(0, abs=1e-5)
    # references moved by hand: chosen ref 1 above the policy (drop 1), rejected ref equal (h = -1)
    c, r = model_logps(model, FEATS)
    moved = [{**f, "ref_chosen_logp": cs + 1.0, "ref_rejected_logp": rs} for f, (cs, _), (rs, _) in zip(FEATS, c, r)]
    loss, m = obj(model, batch_fn(moved))
    assert float(loss) == pytest.approx(-math.log(sig(0.1 * (-1.0 - 50 * 1.0))), rel=1e-4)
    assert m["dpop/chosen_drop"] == pytest.approx(1.0, rel=1e-4) and m["dpop/frac_below_ref"] == 1.0
    with pytest.raises(KeyError, match="ref_chosen_logp"):
        obj(model, batch_fn(FEATS))


# ---- contract --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in OBJECTIVES if n not in ("ppo", "grpo", "rloo")])  # online: not an Objective
def test_every_offline_objective_declares_its_contract(name):
    obj = build(name)
    assert isinstance(obj, Objective)
    assert obj.data_kind in ("sft", "preference", "unpaired") and obj.unit in ("tokens", "examples")
    assert "unit" in type(obj).__dict__  # declared on the class itself, not inherited by accident


def test_registry_rejects_bad_settings():
    with pytest.raises(TypeError, match="gamma_beta_ratio"):
        build("simpo", gamma_beta_ratio=0.5)
    with pytest.raises(ValueError, match="lam"):
        build("orpo", lam=-1.0)
    with pytest.raises(ValueError, match="beta"):
        build("dpop", beta=0.0)
