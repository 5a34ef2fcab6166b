"""Issue 16 baselines: L1/L2 anchors at the start of preference training (#2), Fisher EWC accumulation (#6),
float64 sums of the change C_i and of the Fisher (#10)."""

from __future__ import annotations

import pytest
import torch
from helpers_regularizers import Toy, grads, roundtrip, stages, zero_grads
from torch import nn

from tandem.regularizers import NO_DATA, Anchor, FisherEWC, StageData, build, tensor_change

W0 = ([1, 2], [[0, 0], [0, 0]], [1, 1, 1])  # start of training
W1 = ([2, 0], [[0, 0], [0, 0]], [1, 1, 1])  # end of SFT-1 = start of pref-1
W2 = ([2, 0], [[0, 1], [0, 0]], [1, 1, 1])  # end of pref-1 = start of SFT-2
W3 = ([2, 0], [[0, 1], [0, 0]], [3, 1, 1])  # end of SFT-2 = start of pref-2


def penalty_grads(reg, model, w):
    """Gradient and penalty of ``reg`` at weights ``w`` (inside the running stage)."""
    model.set(*w)
    zero_grads(model)
    reg.grad_term(model)
    return grads(model), reg.last_penalty


# ---- #2 anchors ------------------------------------------------------------------------------------------------

def test_l2_default_anchors_at_the_start_of_preference_training_and_is_off_during_sft():
    model, reg = Toy(), build("l2", lam=2.0)
    ifa, hpa = stages("ifa", "hpa")
    model.set(*W0)
    reg.before_stage(model, ifa)
    g, pen = penalty_grads(reg, model, W1)  # moved away from the start during SFT: no penalty there
    assert pen == 0.0 and all(t.abs().sum() == 0 for t in g.values())
    reg.after_stage(model, ifa, NO_DATA)
    reg.before_stage(model, hpa)  # anchor = W1, the SFT model (pre-RLHF)
    g, pen = penalty_grads(reg, model, ([2, 1], [[0, 0], [0, 0]], [1, 1, 1]))  # a moved by [0, 1] from W1
    assert g["a"].tolist() == [0.0, 2.0] and g["b"].abs().sum() == 0 and g["c"].abs().sum() == 0
    assert pen == pytest.approx(2.0 / 2 * 1.0)
    reg.after_stage(model, hpa, NO_DATA)


def test_l1_default_in_an_alternating_schedule_reanchors_at_each_preference_stage():
    model, reg = Toy(), Anchor(lam=3.0, norm="l1")
    ifa1, hpa1, ifa2, hpa2 = stages("ifa", "hpa", "ifa", "hpa")
    model.set(*W0)
    reg.before_stage(model, ifa1)
    model.set(*W1)
    reg.after_stage(model, ifa1, NO_DATA)
    reg.before_stage(model, hpa1)
    model.set(*W2)
    reg.after_stage(model, hpa1, NO_DATA)
    reg.before_stage(model, ifa2)
    g, pen = penalty_grads(reg, model, W3)
    assert pen == 0.0 and reg.anchor is None  # no anchor held during SFT
    reg.after_stage(model, ifa2, NO_DATA)
    reg.before_stage(model, hpa2)  # anchor = W3, the start of this preference stage
    g, pen = penalty_grads(reg, model, ([2, 0], [[0, 1], [0, 0]], [3, 1, 0.5]))  # c moved by -0.5 at [2]
    assert g["c"].tolist() == [0.0, 0.0, -3.0] and g["a"].abs().sum() == 0 and g["b"].abs().sum() == 0
    assert pen == pytest.approx(3.0 * 0.5)


def test_anchor_initial_with_preference_stages_only():
    model, reg = Toy(), build("l2_anchor", lam=1.0, anchor="initial", stages="preference")
    ifa, hpa = stages("ifa", "hpa")
    model.set(*W0)
    reg.before_stage(model, ifa)
    assert penalty_grads(reg, model, W1)[1] == 0.0
    reg.after_stage(model, ifa, NO_DATA)
    reg.before_stage(model, hpa)
    g, pen = penalty_grads(reg, model, W1)  # distance to W0: a differs by [1, -2]
    assert g["a"].tolist() == [1.0, -2.0] and pen == pytest.approx(0.5 * 5)


def test_mid_stage_resume_keeps_the_stage_kind():
    model, reg = Toy(), build("l2", lam=1.0)
    ifa, hpa = stages("ifa", "hpa")
    model.set(*W0)
    reg.before_stage(model, ifa)
    model.set(*W1)
    reg.after_stage(model, ifa, NO_DATA)
    reg.before_stage(model, hpa)
    other = build("l2", lam=1.0)  # a fresh process: before_stage is not called again on resume
    other.load_state_dict(roundtrip(reg.state_dict()))
    g1, p1 = penalty_grads(reg, model, W2)
    g2, p2 = penalty_grads(other, model, W2)
    assert p1 == p2 == pytest.approx(0.5) and all(torch.equal(g1[n], g2[n]) for n in "abc")


def test_anchor_settings_are_checked():
    with pytest.raises(ValueError, match="anchor: initial"):
        Anchor(anchor="preference_start", stages="all")
    with pytest.raises(ValueError, match="anchor"):
        Anchor(anchor="sft_start")
    with pytest.raises(ValueError, match="stages"):
        Anchor(anchor="initial", stages="sft")


# ---- #6 Fisher accumulation ------------------------------------------------------------------------------------

class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, 0.0]))
        self.b = nn.Parameter(torch.tensor([0.0]))


def gauss_logp(model, batch):
    """-(y - w.x - b)^2 / 2: d/dw = r x, d/db = r with r the residual."""
    x, y = batch
    r = y - (model.w * x).sum() - model.b.sum()
    return -0.5 * r**2


E1 = [(torch.tensor([1.0, 2.0]), 2.0), (torch.tensor([0.0, 1.0]), 3.0)]  # at w=[1,0], b=0: F_w [0.5, 6.5], F_b [5]
E2 = [(torch.tensor([0.0, 1.0]), 3.0)]  # at w=[1,0], b=1: r = 2, F_w [0, 4], F_b [4]


@pytest.mark.parametrize("accumulate, f_w, f_b", [(False, [0.0, 4.0], [4.0]), (True, [0.5, 10.5], [9.0])])
def test_fisher_accumulate_sums_the_estimates_of_a_kind_and_anchors_at_the_latest(accumulate, f_w, f_b):
    lam = 2.0
    model = Linear()
    reg = build("fisher", lam=lam, samples=2, accumulate=accumulate, logp_fn=gauss_logp)
    ifa1, hpa1, ifa2, hpa2 = stages("ifa", "hpa", "ifa", "hpa")
    reg.before_stage(model, ifa1)
    reg.after_stage(model, ifa1, StageData(lambda n: E1[:n]))
    reg.before_stage(model, hpa1)
    reg.after_stage(model, hpa1, StageData(lambda n: E1[:n]))
    reg.before_stage(model, ifa2)
    with torch.no_grad():
        model.b.fill_(1.0)  # the end of SFT-2 differs from the end of SFT-1
    reg.after_stage(model, ifa2, StageData(lambda n: E2[:n]))
    fisher = reg.fisher["ifa"].tensors()
    assert fisher["w"].tolist() == f_w and fisher["b"].tolist() == f_b
    reg.before_stage(model, hpa2)
    with torch.no_grad():
        model.w.add_(torch.tensor([1.0, -1.0]))
        model.b.add_(2.0)
    zero_grads(model)
    reg.grad_term(model)  # anchor: the end of SFT-2 (w=[1, 0], b=1) in both modes
    assert model.w.grad.tolist() == [lam * f_w[0] * 1, lam * f_w[1] * -1]
    assert model.b.grad.tolist() == [lam * f_b[0] * 2]
    assert reg.state_dict()["accumulate"] is accumulate


def test_fisher_accumulate_survives_a_state_round_trip():
    model = Linear()
    reg = FisherEWC(samples=2, accumulate=True, logp_fn=gauss_logp)
    ifa1, ifa2 = stages("ifa", "ifa")
    for st in (ifa1, ifa2):
        reg.before_stage(model, st)
        reg.after_stage(model, st, StageData(lambda n: E1[:n]))
    other = FisherEWC(samples=2, accumulate=True, logp_fn=gauss_logp)
    other.load_state_dict(roundtrip(reg.state_dict()))
    assert other.fisher["ifa"].tensors()["w"].tolist() == [1.0, 13.0]
    with pytest.raises(ValueError, match="accumulate"):
        FisherEWC(accumulate="yes")


# ---- #10 precision ---------------------------------------------------------------------------------------------

def test_tensor_change_is_summed_in_float64():
    """On 1.5M float32 elements a float32 sum of squares is off by ~4e-5 relative; the float64 sum is not."""
    g = torch.Generator().manual_seed(0)
    before = torch.randn(1_500_000, generator=g) * 0.02
    after = before + torch.randn(1_500_000, generator=g) * 1e-3
    diff = after - before  # the difference in the parameter dtype, as the regularizer takes it
    exact = float((diff.double() ** 2).sum()) / diff.numel()
    f32 = float(torch.linalg.vector_norm(diff).double() ** 2) / diff.numel()
    assert abs(f32 - exact) / exact > 1e-6  # the float32 sum is measurably off on this tensor
    got = tensor_change({"w": before}, {"w": after})["w"]
    assert got == pytest.approx(exact, rel=1e-10)


class Scalar(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))


def test_fisher_squared_gradients_are_summed_in_float64():
    """Squared gradients 1e8 then 1000 x 1: in float32 every 1 is lost (ulp of 1e8 is 8)."""
    examples = [1e4] + [1.0] * 1000
    reg = FisherEWC(samples=len(examples), logp_fn=lambda m, g: (m.w * g).sum())  # d logp / dw = g
    model = Scalar()
    (ifa,) = stages("ifa")
    reg.before_stage(model, ifa)
    reg.after_stage(model, ifa, StageData(lambda n: examples[:n]))
    exact = (1e8 + 1000) / 1001
    assert float(reg.fisher["ifa"].tensors()["w"]) == pytest.approx(exact, rel=1e-6)  # float32: 1e8/1001, 1e-5 off
