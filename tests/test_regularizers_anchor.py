"""Distance-to-start anchors (l2 / l1) and the registry."""

from __future__ import annotations

import pytest
import torch
from helpers_regularizers import Toy, grads, roundtrip, stages, zero_grads

from tandem.regularizers import NO_DATA, Anchor, FisherEWC, Freeze, ModifiedEWC, build

IFA1, HPA1 = stages("ifa", "hpa")


def started(norm, lam):
    model = Toy()
    model.set([1, 2], [[0, 0], [0, 0]], [1, 1, 1])  # start weights
    reg = Anchor(lam=lam, norm=norm, anchor="initial", stages="all")  # the older behaviour
    reg.before_stage(model, IFA1)
    model.set([2, 0], [[0, 0], [0, 0]], [1, 1, 1])  # a moved by [1, -2]
    reg.after_stage(model, IFA1, NO_DATA)
    reg.before_stage(model, HPA1)  # the anchor stays at the start
    model.set([2, 0], [[0, 0.5], [0, 0]], [1, 1, 1])  # b moved by 0.5 at [0, 1]
    zero_grads(model)
    return model, reg


def test_l2_anchor_by_hand():
    model, reg = started("l2", 3.0)
    reg.grad_term(model)
    g = grads(model)
    assert g["a"].tolist() == [3.0, -6.0] and g["b"].tolist() == [[0.0, 1.5], [0.0, 0.0]] and g["c"].abs().sum() == 0
    expected = 3.0 / 2 * (1 + 4 + 0.25)
    assert reg.last_penalty == pytest.approx(expected) and reg.penalty(model) == pytest.approx(expected)


def test_l1_anchor_by_hand():
    model, reg = started("l1", 3.0)
    reg.grad_term(model)
    g = grads(model)
    assert g["a"].tolist() == [3.0, -3.0] and g["b"].tolist() == [[0.0, 3.0], [0.0, 0.0]] and g["c"].abs().sum() == 0
    assert reg.last_penalty == pytest.approx(3.0 * (1 + 2 + 0.5))


def test_anchor_state_round_trip():
    model, reg = started("l2", 1.0)
    other = Anchor(lam=1.0, anchor="initial", stages="all")
    other.load_state_dict(roundtrip(reg.state_dict()))
    reg.grad_term(model)
    g1 = grads(model)
    zero_grads(model)
    other.grad_term(model)
    assert all(torch.equal(g1[n], grads(model)[n]) for n in "abc")


def test_registry_builds_every_name():
    assert isinstance(build("modified_ewc", lam=2.0), ModifiedEWC)
    assert build("sequential-ewc").mode == "sequential"
    assert isinstance(build("fisher_ewc", samples=4), FisherEWC)
    assert isinstance(build("freeze", percent=10), Freeze) and isinstance(build("hbat-freeze"), Freeze)
    assert build("l2_anchor").norm == "l2" and build("L1-Anchor", lam=0.1).norm == "l1"


def test_registry_errors():
    with pytest.raises(ValueError, match=r"unknown regularizer 'ewc2'.*modified_ewc"):
        build("ewc2")
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['lambda'\]"):
        build("modified_ewc", **{"lambda": 1.0})
    with pytest.raises(TypeError, match="norm"):
        build("l2_anchor", norm="l1")  # fixed by the name
