"""The scale-free importance normalisations (log, rank, relative) by hand, and the tracker's magnitude M."""

from __future__ import annotations

import math

import pytest
from helpers_regularizers import Toy, roundtrip, stages

from tandem.regularizers import NO_DATA, ModifiedEWC, importance, recompute_importance
from tandem.regularizers.importance import NORMALISATIONS


def softmax(z, f_max=1.0):
    e = [math.exp(v) for v in z]
    return [f_max * v / sum(e) for v in e]


AC = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 0.0}


@pytest.mark.parametrize(
    "kw, want",
    [
        ({"normalise": "log"}, [1 / 6, 2 / 6, 3 / 6, 0.0]),  # F ∝ AC
        ({"normalise": "log", "temperature": 0.5}, [1 / 14, 4 / 14, 9 / 14, 0.0]),  # F ∝ AC^2
        ({"normalise": "log", "temperature": 2.0},
         [x / (1 + math.sqrt(2) + math.sqrt(3)) for x in (1, math.sqrt(2), math.sqrt(3), 0.0)]),
        ({"normalise": "rank"}, softmax([1 / 3, 2 / 3, 1.0, 0.0])),  # ranks 1, 2, 3, 0 over N - 1 = 3
        ({"normalise": "rank", "temperature": 0.25}, softmax([4 / 3, 8 / 3, 4.0, 0.0])),
    ],
)
def test_log_and_rank_by_hand(kw, want):
    f = importance(AC, f_max=2.0, **kw)
    assert list(f) == list(AC)
    assert list(f.values()) == pytest.approx([2.0 * w for w in want])


def test_rank_ties_share_the_mean_rank():
    f = importance({"a": 1.0, "b": 1.0, "c": 5.0}, normalise="rank")  # ranks 0.5, 0.5, 2 over 2
    assert list(f.values()) == pytest.approx(softmax([0.25, 0.25, 1.0]))
    assert list(importance({"a": 7.0}, normalise="rank").values()) == [1.0]


def test_relative_divides_by_the_magnitude_by_hand():
    ac = {"a": 1.0, "b": 2.0, "c": 3.0}
    mag = {"a": 1.0, "b": 4.0, "c": 1.0}  # relative change 1, 0.5, 3 (sum 4.5)
    f = importance(ac, f_max=3.0, normalise="relative", magnitude=mag)
    assert list(f.values()) == pytest.approx([3.0 / 4.5, 1.5 / 4.5, 9.0 / 4.5])
    f = importance(ac, normalise="relative", temperature=0.5, magnitude=mag)  # squares 1, 0.25, 9
    assert list(f.values()) == pytest.approx([1 / 10.25, 0.25 / 10.25, 9 / 10.25])


def test_degenerate_cases_of_the_new_normalisations():
    zeros = {"a": 0.0, "b": 0.0}
    assert list(importance(zeros, normalise="log").values()) == [0.5, 0.5]
    assert list(importance(zeros, normalise="relative", magnitude={"a": 1.0, "b": 0.0}).values()) == [0.5, 0.5]
    inf = importance({"a": 1.0, "b": 1.0, "c": 0.0}, normalise="relative", magnitude={"a": 0.0, "b": 1.0, "c": 0.0})
    assert list(inf.values()) == [1.0, 0.0, 0.0]  # anchor all zeros but it moved: infinite relative change
    with pytest.raises(ValueError, match="needs the tensors' magnitude"):
        importance({"a": 1.0}, normalise="relative")
    with pytest.raises(ValueError, match="no magnitude for tensor"):
        importance({"a": 1.0, "b": 2.0}, normalise="relative", magnitude={"a": 1.0})


@pytest.mark.parametrize("normalise", ["mean", "zscore", "log", "rank", "relative"])
def test_scale_free_normalisations_ignore_the_learning_rate_scale(normalise):
    ac = {"a": 3e-10, "b": 1e-12, "c": 4e-11, "d": 2e-9}
    mag = {"a": 1e-4, "b": 1.0, "c": 4e-4, "d": 1e-3}
    f = importance(ac, normalise=normalise, magnitude=mag)
    g = importance({k: 1e4 * v for k, v in ac.items()}, normalise=normalise, magnitude=mag)
    assert list(f.values()) == pytest.approx(list(g.values()), rel=1e-9)
    assert set(NORMALISATIONS) >= {"none", "scale", "mean", "zscore", "log", "rank", "relative"}


# ---- the tracker records M and uses the anchor's -----------------------------------------------------------------

IFA1, HPA1, IFA2, HPA2 = stages("ifa", "hpa", "ifa", "hpa")
W1 = ([1, 1], [[2, 2], [0, 0]], [3, 0, 0])  # M = a 1, b 2, c 3; C from zeros = 1, 2, 3
W2 = ([1, 2], [[2, 2], [0, 2]], [3, 0, 0])  # M = a 2.5, b 3, c 3; C = 0.5, 1, 0
W3 = ([3, 2], [[2, 2], [0, 2]], [3, 0, 3])  # M = a 6.5, b 3, c 6; C = 2, 0, 3


def run(reg, model):
    for st, w in zip((IFA1, HPA1, IFA2), (W1, W2, W3)):
        reg.before_stage(model, st)
        model.set(*w)
        reg.after_stage(model, st, NO_DATA)
    reg.before_stage(model, HPA2)


def test_relative_importance_in_a_run_uses_the_latest_anchor_magnitude():
    model, reg = Toy(), ModifiedEWC(f_max=2.0, normalise="relative")
    run(reg, model)
    rep = reg.report()
    # AC_ifa = a 3, b 2, c 6 over M at the end of IFA2 (a 6.5, b 3, c 6); AC_hpa = C2 over M at the end of HPA1
    r_ifa = [3 / 6.5, 2 / 3, 1.0]
    r_hpa = [0.5 / 2.5, 1 / 3, 0.0]
    for i, n in enumerate("abc"):
        t = rep["tensors"][n]
        assert t["magnitude_ifa"] == pytest.approx([6.5, 3.0, 6.0][i])
        assert t["magnitude_hpa"] == pytest.approx([2.5, 3.0, 3.0][i])
        assert t["f_ifa"] == pytest.approx(2.0 * r_ifa[i] / sum(r_ifa))
        assert t["f_hpa"] == pytest.approx(2.0 * r_hpa[i] / sum(r_hpa))


def test_magnitude_survives_state_and_matches_recompute():
    import torch

    model, reg = Toy(), ModifiedEWC(normalise="relative", temperature=0.5)
    run(reg, model)
    other = ModifiedEWC(normalise="relative", temperature=0.5)
    other.load_state_dict(roundtrip(reg.state_dict()))
    assert other.report()["tensors"] == reg.report()["tensors"]

    def sd(w):
        return {n: torch.tensor(x, dtype=torch.float32) for n, x in zip("abc", w)}

    zeros = {"a": torch.zeros(2), "b": torch.zeros(2, 2), "c": torch.zeros(3)}
    rep = recompute_importance([("ifa", zeros, sd(W1)), ("hpa", sd(W1), sd(W2)), ("ifa", sd(W2), sd(W3))],
                               normalise="relative", temperature=0.5)
    for n in "abc":
        for k in ("f_ifa", "f_hpa", "magnitude_ifa", "magnitude_hpa"):
            assert rep["tensors"][n][k] == pytest.approx(reg.report()["tensors"][n][k])


def test_old_state_without_magnitude_loads_and_relative_refuses_clearly():
    model, reg = Toy(), ModifiedEWC(normalise="zscore")
    run(reg, model)
    state = reg.state_dict()
    for s in state["tracker"]["stages"]:
        del s["magnitude"]  # saved before M was recorded
    old = ModifiedEWC(normalise="zscore")
    old.load_state_dict(state)
    assert old.report()["tensors"]["a"]["f_ifa"] == pytest.approx(reg.report()["tensors"]["a"]["f_ifa"])
    rel = ModifiedEWC(normalise="relative")
    with pytest.warns(UserWarning):
        rel.load_state_dict(state)
    with pytest.raises(ValueError, match="no magnitude"):
        rel.tracker.importance("ifa")
