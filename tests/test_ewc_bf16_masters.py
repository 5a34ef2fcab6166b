"""The change tracker of modified EWC / hbat-freeze reads the fp32 master weights when training keeps bf16 weights:
a stage's change below bf16's resolution is in the masters, and the bf16 weights would record it as zero."""

from __future__ import annotations

import json

import pytest
import torch
from helpers_regularizers import Toy, stages
from test_engine_train import recipe

from tandem.optim import MasterAdamW, adamw, trained_values
from tandem.pipelines.train import train
from tandem.regularizers import NO_DATA, Freeze, ModifiedEWC, StageData


def one_small_step(model: torch.nn.Module, lr: float) -> MasterAdamW:
    """One AdamW step with every gradient 1: each element moves by lr (Adam's first step is lr * g / (|g| + eps))."""
    opt = adamw(model.parameters(), lr=lr)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    return opt


@pytest.mark.parametrize("make", [lambda: ModifiedEWC(lam=1.0), lambda: Freeze(percent=50.0)])
def test_change_of_a_bf16_stage_is_read_from_the_masters(make):
    ifa, = stages("ifa")
    for source in ("masters", "weights"):
        model = Toy().to(torch.bfloat16)
        model.set([1.0, 1.0], [[1.0, 1.0], [1.0, 1.0]], [1.0, 1.0, 1.0])  # bf16 spacing at 1.0: 2^-7
        reg = make()
        reg.before_stage(model, ifa)
        opt = one_small_step(model, lr=1e-4)
        assert type(opt) is MasterAdamW and all(bool((p == 1.0).all()) for p in model.parameters())  # rounded away
        data = StageData(NO_DATA.single_batches, trained_values(opt, model)) if source == "masters" else NO_DATA
        reg.after_stage(model, ifa, data)
        change = {n: t["change"][ifa.name] for n, t in reg.report()["tensors"].items()}
        # by hand: every element moved by 1e-4 (Adam eps 1e-8 against |g| = 1), so C = (1e-4)^2 = 1e-8
        expected = 1e-8 if source == "masters" else 0.0
        assert change == pytest.approx({"a": expected, "b": expected, "c": expected}, rel=1e-3, abs=1e-14)


def test_trained_values_are_masters_for_bf16_and_the_parameter_for_fp32():
    model = Toy()
    model.c.data = model.c.data.to(torch.bfloat16)
    opt = one_small_step(model, lr=1e-4)
    values = trained_values(opt, model)
    assert {n: v.dtype for n, v in values.items()} == {"a": torch.float32, "b": torch.float32, "c": torch.float32}
    assert values["a"].data_ptr() == model.a.data_ptr()  # fp32 parameters are their own masters
    assert torch.allclose(values["c"], torch.full((3,), -1e-4), rtol=1e-3) and bool((model.c == 0).all()) is False
    model32 = Toy()
    plain = torch.optim.AdamW(model32.parameters(), lr=1e-3)
    assert trained_values(plain, model32)["b"].data_ptr() == model32.b.data_ptr()


@pytest.mark.usefixtures("one_thread")
def test_bf16_hbat_run_records_changes_below_bf16_resolution(tmp_path, tiny_model_dir, synthetic_files):
    """lr 1e-7 for 2 steps leaves the tiny model's norm vectors (1.0, bf16 spacing 2^-7) at their bf16 values, so
    their change from the bf16 weights would be zero; from the masters every tensor of every stage moved."""
    r = recipe(tmp_path, tiny_model_dir, synthetic_files, method="hbat", **{
        "precision": "bf16", "optimizer.lr": 1e-7, "optimizer.scheduler": "constant", "optimizer.warmup_ratio": 0.0,
        "schedule.parts": 2, "schedule.max_steps_per_stage": 2, "checkpoint.stage_weights": True,
        "hbat.ewc": {"lam": 1.0, "f_max": 50.0, "normalise": "zscore", "temperature": 1.0}})
    train(r)
    run = tmp_path / "run"
    from safetensors.torch import load_file

    start, end = load_file(str(run / "stages" / "start.safetensors")), load_file(str(run / "stages" / "04-pref-2" / "end.safetensors"))
    still = [n for n in start if torch.equal(start[n], end[n])]  # bf16 weights that never moved (the norms, at 1.0)
    assert any(n.endswith("norm.weight") for n in still)
    rep = json.loads((run / "stages" / "04-pref-2" / "importance.json").read_text())
    changes = [c for t in rep["tensors"].values() for c in t["change"].values()]
    assert len(changes) == 4 * len(rep["tensors"]) and min(changes) > 0  # recorded from the masters
    # two Adam steps of ~lr per element: C ~ (2e-7)^2 = 4e-14, far below what a bf16 rounding step records when a
    # weight does move (spacing ~1e-4 at 0.02: ~1e-8 per moved element)
    assert max(changes) < 1e-12
