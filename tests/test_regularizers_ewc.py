"""Modified EWC (HBAT): C, AC, F by hand, the switching rule, grad_term == autograd of the penalty, state."""

from __future__ import annotations

import math

import pytest
import torch
from helpers_regularizers import Toy, grads, roundtrip, stages, weights, zero_grads

from tandem.regularizers import NO_DATA, ModifiedEWC, importance, recompute_importance, tensor_change

IFA1, HPA1, IFA2, HPA2 = stages("ifa", "hpa", "ifa", "hpa")
# end-of-stage weights of the scenario (a [2], b [2, 2], c [3]); the model starts at zeros
W1 = ([1, 1], [[2, 2], [0, 0]], [3, 0, 0])  # C = a 1, b (4+4)/4 = 2, c 9/3 = 3
W2 = ([1, 2], [[2, 2], [0, 2]], [3, 0, 0])  # C = a 1/2, b 4/4 = 1, c 0
W3 = ([3, 2], [[2, 2], [0, 2]], [3, 0, 3])  # C = a 4/2 = 2, b 0, c 9/3 = 3
C1 = {"a": 1.0, "b": 2.0, "c": 3.0}
C2 = {"a": 0.5, "b": 1.0, "c": 0.0}
C3 = {"a": 2.0, "b": 0.0, "c": 3.0}


def softmax(z, f_max=1.0):
    e = [math.exp(v) for v in z]
    return [f_max * v / sum(e) for v in e]


def run(reg, model, upto):
    """Run the scenario's stages with ``reg``; stops inside stage ``upto`` (after its before_stage)."""
    for st, w in zip((IFA1, HPA1, IFA2, HPA2), (W1, W2, W3, None)):
        reg.before_stage(model, st)
        if st is upto:
            return
        model.set(*w)
        reg.after_stage(model, st, NO_DATA)


def autograd_reference(model, lam, f, anchor):
    """Gradient of the penalty written as a differentiable expression."""
    zero_grads(model)
    params = dict(model.named_parameters())
    pen = lam / 2 * sum(f[n] * ((params[n] - anchor[n]) ** 2).sum() for n in f)
    pen.backward()
    return float(pen.detach()), grads(model)


# ---- pure functions -------------------------------------------------------------------------------------------

def test_tensor_change_is_mean_squared_difference():
    before = {"a": torch.zeros(2), "b": torch.zeros(2, 2), "c": torch.zeros(3)}
    after = {"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([[2.0, 2.0], [0.0, 0.0]]), "c": torch.tensor([3.0, 0, 0])}
    assert tensor_change(before, after) == pytest.approx(C1, abs=1e-7)
    with pytest.raises(KeyError, match="'after' lacks"):
        tensor_change(before, {"a": after["a"]})


@pytest.mark.parametrize(
    "kw, z",
    [
        ({"normalise": "none"}, [1.0, 2.0, 3.0]),
        ({"normalise": "mean"}, [0.5, 1.0, 1.5]),  # / mean 2
        ({"normalise": "mean", "temperature": 2.0}, [0.25, 0.5, 0.75]),
        ({"normalise": "zscore"}, [-1 / math.sqrt(2 / 3), 0.0, 1 / math.sqrt(2 / 3)]),  # population std sqrt(2/3)
        ({"normalise": "scale", "scale": 10.0, "temperature": 4.0}, [2.5, 5.0, 7.5]),
    ],
)
def test_importance_by_hand(kw, z):
    f = importance(C1, f_max=2.0, **kw)
    assert list(f) == ["a", "b", "c"]
    assert list(f.values()) == pytest.approx(softmax(z, 2.0), rel=1e-12)
    assert sum(f.values()) == pytest.approx(2.0)


def test_importance_degenerate_and_extreme_cases():
    tiny = {"a": 1e-10, "b": 2e-10, "c": 3e-10}
    assert list(importance(tiny, normalise="none").values()) == pytest.approx([1 / 3] * 3)  # uninformative
    assert list(importance(tiny, normalise="scale", scale=1e20).values()) == [0.0, 0.0, 1.0]  # one-hot
    same = {"a": 5.0, "b": 5.0}
    assert list(importance(same, normalise="zscore").values()) == [0.5, 0.5]  # std 0 -> uniform
    assert list(importance({"a": 0.0, "b": 0.0}, normalise="mean").values()) == [0.5, 0.5]  # mean 0 -> uniform
    with pytest.raises(ValueError, match="normalise"):
        importance(C1, normalise="max")
    with pytest.raises(ValueError, match="temperature"):
        importance(C1, temperature=0.0)


# ---- stage hooks ----------------------------------------------------------------------------------------------

def test_change_accumulation_and_importance_report():
    model, reg = Toy(), ModifiedEWC(lam=1.0, f_max=2.0, normalise="mean")
    run(reg, model, HPA2)
    rep = reg.report()
    assert [s["kind"] for s in rep["stages"]] == ["ifa", "hpa", "ifa"]
    ac_ifa = {n: C1[n] + C3[n] for n in C1}  # a 3, b 2, c 6 (mean 11/3)
    ac_hpa = C2  # mean 0.5
    f_ifa = softmax([3 / (11 / 3), 2 / (11 / 3), 6 / (11 / 3)], 2.0)
    f_hpa = softmax([0.5 / 0.5, 1.0 / 0.5, 0.0], 2.0)
    for i, n in enumerate("abc"):
        t = rep["tensors"][n]
        assert list(t["change"].values()) == pytest.approx([C1[n], C2[n], C3[n]], abs=1e-7)
        assert list(t["change"]) == [IFA1.name, HPA1.name, IFA2.name]
        assert t["ac_ifa"] == pytest.approx(ac_ifa[n]) and t["ac_hpa"] == pytest.approx(ac_hpa[n])
        assert t["f_ifa"] == pytest.approx(f_ifa[i]) and t["f_hpa"] == pytest.approx(f_hpa[i])


def test_first_ifa_stage_adds_nothing():
    model, reg = Toy(), ModifiedEWC(lam=5.0)
    run(reg, model, IFA1)
    model.set(*W1)  # moved away from every possible anchor
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    reg.grad_term(model)
    assert all(torch.equal(g, torch.ones_like(g)) for g in grads(model).values())
    assert reg.last_penalty == 0.0 and reg.penalty(model) == 0.0


def test_hpa_stage_anchors_at_end_of_ifa_with_f_ifa():
    lam = 3.0
    model, reg = Toy(), ModifiedEWC(lam=lam, f_max=2.0, normalise="mean")
    run(reg, model, HPA1)
    model.set([2, 1], [[2, 2], [0, -1]], [3, 0, 0])  # theta - W1: a [1, 0], b [[0, 0], [0, -1]], c 0
    zero_grads(model)
    reg.grad_term(model)
    fa, fb, fc = softmax([0.5, 1.0, 1.5], 2.0)  # F^IFA from AC^IFA = C1 = (1, 2, 3), mean 2
    g = grads(model)
    assert g["a"].tolist() == pytest.approx([lam * fa, 0.0])
    assert g["b"].tolist() == [pytest.approx([0.0, 0.0]), pytest.approx([0.0, -lam * fb])]
    assert g["c"].tolist() == [0.0, 0.0, 0.0]
    expected = lam / 2 * (fa * 1 + fb * 1 + fc * 0)
    assert reg.last_penalty == pytest.approx(expected) and reg.penalty(model) == pytest.approx(expected)


def test_ifa2_uses_f_hpa_and_hpa2_uses_latest_ifa_anchor():
    lam = 2.0
    model, reg = Toy(), ModifiedEWC(lam=lam, f_max=1.0, normalise="none")
    run(reg, model, IFA2)
    model.set(*W3)  # theta - W2 = a [2, 0], b 0, c [0, 0, 3]
    zero_grads(model)
    reg.grad_term(model)
    f_hpa = softmax([0.5, 1.0, 0.0])
    assert grads(model)["a"].tolist() == pytest.approx([lam * f_hpa[0] * 2, 0.0])
    assert grads(model)["c"].tolist() == pytest.approx([0.0, 0.0, lam * f_hpa[2] * 3])
    reg.after_stage(model, IFA2, NO_DATA)
    reg.before_stage(model, HPA2)
    model.set([3, 2], [[2, 2], [0, 2]], [3, 0, 4])  # theta - W3 = c [0, 0, 1] only
    zero_grads(model)
    reg.grad_term(model)
    f_ifa = softmax([1 + 2, 2 + 0, 3 + 3])  # AC^IFA = C1 + C3
    assert grads(model)["c"].tolist() == pytest.approx([0.0, 0.0, lam * f_ifa[2]])
    assert grads(model)["a"].abs().sum() == 0 and grads(model)["b"].abs().sum() == 0


@pytest.mark.parametrize("normalise", ["none", "mean", "zscore"])
@pytest.mark.parametrize("anchor_device", ["same", "cpu"])
def test_grad_term_equals_autograd_of_penalty(normalise, anchor_device):
    lam = 0.7
    model = Toy(c_dtype=torch.float64)  # two dtype groups
    reg = ModifiedEWC(lam=lam, f_max=3.0, normalise=normalise, anchor_device=anchor_device)
    run(reg, model, HPA2)
    anchor = {n: torch.tensor(w, dtype=dict(model.named_parameters())[n].dtype) for n, w in zip("abc", W3)}
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    f = reg.tracker.importance("ifa")
    pen, ref = autograd_reference(model, lam, f, anchor)
    zero_grads(model)
    reg.grad_term(model)
    for n, g in grads(model).items():
        torch.testing.assert_close(g, ref[n])
    assert reg.last_penalty == pytest.approx(pen, rel=1e-5)
    assert reg.penalty(model) == pytest.approx(pen, rel=1e-5)


def test_grad_term_adds_to_existing_grads_and_creates_missing_ones():
    model, reg = Toy(), ModifiedEWC(lam=1.0, normalise="none")
    run(reg, model, HPA1)
    model.set([2, 1], [[2, 2], [0, 0]], [3, 0, 0])
    model.a.grad = torch.tensor([10.0, 20.0])
    model.b.grad = None
    model.c.grad = None
    reg.grad_term(model)
    fa = softmax([1.0, 2.0, 3.0])[0]
    assert model.a.grad.tolist() == pytest.approx([10.0 + fa, 20.0])
    assert torch.equal(model.b.grad, torch.zeros(2, 2)) and torch.equal(model.c.grad, torch.zeros(3))


def test_bf16_parameters():
    model = Toy().to(torch.bfloat16)
    reg = ModifiedEWC(lam=2.0, normalise="none")
    run(reg, model, HPA1)
    model.set([1.5, 1], [[2, 2], [0, 0]], [3, 0, 0])
    zero_grads(model)
    reg.grad_term(model)
    assert model.a.grad.dtype == torch.bfloat16
    fa = softmax([1.0, 2.0, 3.0])[0]
    assert model.a.grad.float().tolist() == pytest.approx([2.0 * fa * 0.5, 0.0], rel=1e-2)


def test_state_dict_round_trip_gives_identical_grad_terms():
    def fresh():
        return ModifiedEWC(lam=1.3, normalise="zscore", anchor_device="cpu")

    model, reg = Toy(), fresh()
    run(reg, model, IFA2)  # saved mid-stage: before-snapshot of IFA-2 and the HPA anchor are in the state
    state = roundtrip(reg.state_dict())
    other = fresh()
    other.load_state_dict(state)
    model.set([0.5, -1], [[1, 2], [3, 4]], [0, 1, 2])
    outs = []
    for r in (reg, other):
        zero_grads(model)
        r.grad_term(model)
        outs.append((grads(model), r.last_penalty))
    for n in "abc":
        assert torch.equal(outs[0][0][n], outs[1][0][n])
    assert outs[0][1] == outs[1][1] > 0
    # ... and they go on identically through the next stages
    for r in (reg, other):
        model.set(*W3)
        r.after_stage(model, IFA2, NO_DATA)
        r.before_stage(model, HPA2)
    assert reg.report() == other.report()
    model.set([1, 1], [[1, 1], [1, 1]], [1, 1, 1])
    res = []
    for r in (reg, other):
        zero_grads(model)
        r.grad_term(model)
        res.append(grads(model))
    assert all(torch.equal(res[0][n], res[1][n]) for n in "abc")


def test_recompute_importance_from_checkpoints_matches_the_run():
    model, reg = Toy(), ModifiedEWC(normalise="zscore", f_max=1.5, temperature=0.5)
    run(reg, model, HPA2)
    zeros = {"a": torch.zeros(2), "b": torch.zeros(2, 2), "c": torch.zeros(3)}

    def sd(w):
        return {n: torch.tensor(x, dtype=torch.float32) for n, x in zip("abc", w)}

    rep = recompute_importance(
        [("ifa", zeros, sd(W1)), ("hpa", sd(W1), sd(W2)), ("ifa", sd(W2), sd(W3))],
        f_max=1.5, normalise="zscore", temperature=0.5,
    )
    run_rep = reg.report()
    for n in "abc":
        for k in ("ac_ifa", "ac_hpa", "f_ifa", "f_hpa"):
            assert rep["tensors"][n][k] == pytest.approx(run_rep["tensors"][n][k])
        assert list(rep["tensors"][n]["change"].values()) == list(run_rep["tensors"][n]["change"].values())


def test_sequential_schedule_penalises_only_the_second_kind():
    model, reg = Toy(), ModifiedEWC(lam=1.0, mode="sequential")
    ifa, hpa = stages("ifa", "hpa")
    reg.before_stage(model, ifa)
    model.set(*W1)
    zero_grads(model)
    reg.grad_term(model)
    assert reg.last_penalty == 0.0
    reg.after_stage(model, ifa, NO_DATA)
    reg.before_stage(model, hpa)
    model.set(*W2)
    reg.grad_term(model)
    assert reg.last_penalty > 0
    assert reg.report()["config"]["mode"] == "sequential"


def test_bad_settings_and_bad_stage_kind():
    with pytest.raises(ValueError, match="mode"):
        ModifiedEWC(mode="both")
    with pytest.raises(ValueError, match="anchor_device"):
        ModifiedEWC(anchor_device="gpu")
    with pytest.raises(ValueError, match="kind"):
        ModifiedEWC().before_stage(Toy(), stages("sft")[0])
