"""Fisher EWC on a tiny linear model whose per-example gradients are known in closed form."""

from __future__ import annotations

import pytest
import torch
from helpers_regularizers import grads, roundtrip, stages, zero_grads
from torch import nn

from tandem.regularizers import NO_DATA, FisherEWC, StageData

IFA1, HPA1 = stages("ifa", "hpa")


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, 0.0]))
        self.b = nn.Parameter(torch.tensor([0.0]))


def logp(model, batch):
    """Gaussian log-likelihood up to a constant: -(y - w.x - b)^2 / 2; d/dw = r x, d/db = r."""
    x, y = batch
    r = y - (model.w * x).sum() - model.b.sum()
    return -0.5 * r**2


# residuals r = 1 and 3: grads (w: [1, 2], b: 1) and (w: [0, 3], b: 3); the third example is over budget
EXAMPLES = [(torch.tensor([1.0, 2.0]), 2.0), (torch.tensor([0.0, 1.0]), 3.0), (torch.tensor([9.0, 9.0]), 9.0)]
F_W, F_B = [0.5, 6.5], [5.0]  # mean of squares over the 2 examples


def finished_ifa(lam=2.0, **kw):
    model, reg = Linear(), FisherEWC(lam=lam, samples=2, logp_fn=logp, **kw)
    reg.before_stage(model, IFA1)
    reg.after_stage(model, IFA1, StageData(lambda n: EXAMPLES[:n]))
    return model, reg


def test_empirical_fisher_by_hand_and_no_penalty_in_the_first_stage():
    model, reg = Linear(), FisherEWC(lam=2.0, samples=2, logp_fn=logp)
    reg.before_stage(model, IFA1)
    model.w.grad = torch.ones(2)
    reg.grad_term(model)
    assert model.w.grad.tolist() == [1.0, 1.0] and reg.last_penalty == 0.0
    reg.after_stage(model, IFA1, StageData(lambda n: EXAMPLES[:n]))
    fisher = reg.fisher["ifa"].tensors()
    assert fisher["w"].tolist() == F_W and fisher["b"].tolist() == F_B
    assert reg.stages[-1]["examples"] == 2
    assert model.w.grad is None  # the estimate leaves no gradients behind


def test_penalty_gradient_and_value_by_hand():
    lam = 2.0
    model, reg = finished_ifa(lam)
    reg.before_stage(model, HPA1)
    with torch.no_grad():
        model.w.add_(torch.tensor([1.0, -1.0]))
        model.b.add_(2.0)
    zero_grads(model)
    reg.grad_term(model)
    assert model.w.grad.tolist() == [lam * 0.5 * 1, lam * 6.5 * -1]
    assert model.b.grad.tolist() == [lam * 5.0 * 2]
    expected = lam / 2 * (0.5 * 1 + 6.5 * 1 + 5.0 * 4)
    assert reg.last_penalty == pytest.approx(expected) and reg.penalty(model) == pytest.approx(expected)
    # autograd of the written penalty agrees
    zero_grads(model)
    pen = lam / 2 * ((torch.tensor(F_W) * (model.w - torch.tensor([1.0, 0.0])) ** 2).sum() + (5.0 * model.b**2).sum())
    pen.backward()
    assert model.w.grad.tolist() == [1.0, -13.0] and model.b.grad.tolist() == [20.0]


def test_state_round_trip_and_batches_from_a_callable():
    model, reg = finished_ifa(1.5)
    reg.before_stage(model, HPA1)
    other = FisherEWC(lam=1.5, samples=2, logp_fn=logp)
    other.load_state_dict(roundtrip(reg.state_dict()))
    with torch.no_grad():
        model.w.add_(torch.tensor([0.3, 0.7]))
    out = []
    for r in (reg, other):
        zero_grads(model)
        r.grad_term(model)
        out.append(grads(model))
    assert all(torch.equal(out[0][n], out[1][n]) for n in ("w", "b"))
    other.after_stage(model, HPA1, StageData(lambda n: EXAMPLES[1:]))  # the engine's StageData
    assert other.stages[-1]["examples"] == 2 and "hpa" in other.fisher


def test_missing_batches_is_a_clear_error():
    model, reg = Linear(), FisherEWC(logp_fn=logp)
    reg.before_stage(model, IFA1)
    with pytest.raises(ValueError, match="needs example batches"):
        reg.after_stage(model, IFA1, NO_DATA)
    with pytest.raises(ValueError, match="no examples"):
        reg.after_stage(model, IFA1, StageData(lambda n: []))
