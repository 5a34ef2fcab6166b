"""fp16 loss scaling (tandem.optim.GradScaling) on CPU: gradients are unscaled before anything reads them, so
clipping and the EWC gradient term act on true gradients and a scaled fp16-style step equals the unscaled one."""

from __future__ import annotations

import pytest
import torch
from helpers_regularizers import Toy, stages

from tandem.optim import GradScaling
from tandem.regularizers import NO_DATA, ModifiedEWC

SCALE = 1024.0


def loss_of(model):
    return (model.a * torch.tensor([3.0, -4.0])).sum() + (model.b ** 2).sum() + model.c.sum()


def test_scale_then_unscale_gives_true_gradients_once():
    m = Toy()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    s = GradScaling(enabled=True, device="cpu", init_scale=SCALE)
    s.scale(loss_of(m)).backward()
    assert m.a.grad.tolist() == [3 * SCALE, -4 * SCALE]
    s.unscale_(opt)
    s.unscale_(opt)  # a second call in the same step is a no-op, not a second division
    assert m.a.grad.tolist() == [3.0, -4.0]
    s.step(opt)
    assert m.a.detach().tolist() == pytest.approx([-0.3, 0.4])


def test_inf_gradient_skips_the_step_and_lowers_the_scale():
    m = Toy()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    s = GradScaling(enabled=True, device="cpu", init_scale=SCALE)
    s.scale(m.a.sum() * float("inf")).backward()
    s.step(opt)
    assert m.a.detach().tolist() == [0.0, 0.0] and s.get_scale() == SCALE / 2


def test_disabled_is_identity():
    m = Toy()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    s = GradScaling(enabled=False)
    loss = loss_of(m)
    assert s.scale(loss) is loss
    loss.backward()
    s.unscale_(opt)
    s.step(opt)
    assert m.a.detach().tolist() == pytest.approx([-0.3, 0.4]) and s.get_scale() == 1.0 and s.state_dict() == {}


def anchored_ewc(model):
    """A modified EWC in its first HPA stage (anchored at the IFA end weights, F^IFA from that stage's change)."""
    ifa, hpa = stages("ifa", "hpa")
    reg = ModifiedEWC(lam=5.0, f_max=3.0, normalise="none")
    reg.before_stage(model, ifa)
    model.set([1, 1], [[2, 2], [0, 0]], [3, 0, 0])
    reg.after_stage(model, ifa, NO_DATA)
    reg.before_stage(model, hpa)
    model.set([2, 1], [[2, 2], [0, -1]], [3, 1, 0])  # moved away from the anchor: the EWC term is non-zero
    return reg


def engine_step(scaled: bool):
    """One step through the engine's ``apply_step`` (EWC term, clipping at 1.0, SGD) with or without fp16 loss
    scaling; returns (grad_norm it logged, weights after the step)."""
    from accelerate import Accelerator

    from tandem.engine.context import LoopConfig, StageContext
    from tandem.engine.loop import apply_step

    model = Toy()
    reg = anchored_ewc(model)
    ctx = StageContext(accelerator=Accelerator(cpu=True), runner=None, model=model, objective=None, features=[],
                       batch_fn=None, config=LoopConfig(output_dir=".", max_grad_norm=1.0), stage=None,
                       regularizer=reg, log=None, progress=None, on_checkpoint=None,
                       scaling=GradScaling(enabled=scaled, device="cpu", init_scale=SCALE))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx.scaling.scale(loss_of(model)).backward()
    stats = apply_step(ctx, opt)
    return stats, {n: p.detach().clone() for n, p in model.named_parameters()}


def test_engine_clipping_and_ewc_term_see_unscaled_gradients():
    ref_stats, ref_w = engine_step(scaled=False)
    got_stats, got_w = engine_step(scaled=True)
    assert ref_stats["grad_norm"] > 1.0  # the clip is active, so a scaled gradient would change the step
    assert got_stats["grad_norm"] == pytest.approx(ref_stats["grad_norm"], rel=1e-6)
    assert got_stats["reg/penalty"] == pytest.approx(ref_stats["reg/penalty"])
    for n in ref_w:
        assert torch.allclose(got_w[n], ref_w[n], atol=1e-6), n
