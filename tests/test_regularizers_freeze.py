"""hbat-freeze: the top p% tensors by the other kind's importance are frozen for a stage, then released."""

from __future__ import annotations

import pytest
import torch
from helpers_regularizers import Toy, roundtrip, stages

from tandem.regularizers import NO_DATA, Freeze

IFA1, HPA1, IFA2 = stages("ifa", "hpa", "ifa")


def sgd_step(model):
    """An optimizer over every tensor (grad_term takes the frozen ones' grad away, so SGD skips them), one backward."""
    opt = torch.optim.SGD(list(model.parameters()), lr=0.1)
    live = [p for p in model.parameters() if p.requires_grad]
    if live:
        sum((p * torch.arange(1, p.numel() + 1, dtype=p.dtype).view_as(p)).sum() for p in live).backward()
    return opt


def all_weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_first_stage_freezes_nothing():
    model, reg = Toy(), Freeze(percent=50)
    reg.before_stage(model, IFA1)
    assert reg.frozen == [] and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("percent, frozen", [(34, ["c"]), (67, ["c", "b"]), (0, []), (100, ["c", "b", "a"])])
def test_freezes_top_percent_by_other_kind_and_releases_after(percent, frozen):
    model, reg = Toy(), Freeze(percent=percent)
    reg.before_stage(model, IFA1)
    model.set([1, 1], [[2, 2], [0, 0]], [3, 0, 0])  # C = a 1, b 2, c 3: c most important, then b
    reg.after_stage(model, IFA1, NO_DATA)
    reg.before_stage(model, HPA1)
    assert reg.frozen == frozen  # round(3 * percent / 100) tensors
    # frozen through their gradient (grad_term), not requires_grad: they stay in the optimizer and in checkpoints,
    # so a resumed stage rebuilds the same optimizer and restores their values (issue 17 found the old way broke it)
    assert all(p.requires_grad for p in model.parameters())
    before = all_weights(model)
    opt = sgd_step(model)  # the engine builds the optimizer after before_stage
    reg.grad_term(model)
    opt.step()
    after = all_weights(model)
    for n in "abc":
        assert torch.equal(before[n], after[n]) == (n in frozen), n
    reg.after_stage(model, HPA1, NO_DATA)
    assert all(p.requires_grad for p in model.parameters()) and reg.frozen == []
    # frozen tensors did not move, so their HPA change is 0
    rep = reg.report()["tensors"]
    for n in frozen:
        assert rep[n]["change"][HPA1.name] == 0.0


def test_mid_stage_resume_reapplies_the_freeze_in_grad_term():
    model, reg = Toy(), Freeze(percent=34)
    reg.before_stage(model, IFA1)
    model.set([1, 1], [[2, 2], [0, 0]], [3, 0, 0])
    reg.after_stage(model, IFA1, NO_DATA)
    reg.before_stage(model, HPA1)
    state = roundtrip(reg.state_dict())

    model2 = Toy()  # fresh process: every tensor trainable, optimizer built over all of them
    model2.set([1, 1], [[2, 2], [0, 0]], [3, 0, 0])
    reg2 = Freeze(percent=34)
    reg2.load_state_dict(state)
    opt = sgd_step(model2)
    reg2.grad_term(model2)
    assert model2.c.grad is None and model2.c.requires_grad
    c0 = model2.c.detach().clone()
    opt.step()
    assert torch.equal(model2.c.detach(), c0) and not torch.equal(model2.a.detach(), torch.ones(2))
    reg2.after_stage(model2, HPA1, NO_DATA)
    assert model2.c.requires_grad
    assert reg2.report()["tensors"]["c"]["change"] == {IFA1.name: pytest.approx(3.0), HPA1.name: 0.0}


def test_bad_percent():
    with pytest.raises(ValueError, match="percent"):
        Freeze(percent=150)
