"""The uniform regularizer interface: one registry table, the Regularizer protocol, StageData, report()."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch
from helpers_regularizers import Toy, stages

from tandem.regularizers import (
    NO_DATA,
    Anchor,
    FisherEWC,
    Freeze,
    ModifiedEWC,
    Regularizer,
    StageData,
    aliases,
    build,
    names,
)

IFA1, HPA1 = stages("ifa", "hpa")
SRC = Path(__file__).resolve().parents[1] / "src" / "tandem"


def test_registry_is_keyed_by_the_hbat_block_names_with_the_older_names_as_aliases():
    assert names() == ["ewc", "freeze", "fisher", "l2", "l1"]
    assert aliases() == {"modified_ewc": "ewc", "hbat_ewc": "ewc", "sequential_ewc": "ewc", "fisher_ewc": "fisher",
                         "hbat_freeze": "freeze", "l2_anchor": "l2", "l1_anchor": "l1"}
    kinds = {"ewc": ModifiedEWC, "freeze": Freeze, "fisher": FisherEWC, "l2": Anchor, "l1": Anchor}
    for name, cls in kinds.items():
        assert type(build(name)) is cls
    for old, new in aliases().items():
        assert type(build(old)) is type(build(new)), old
    assert build("l2").norm == "l2" and build("l1").norm == "l1"
    assert build("ewc").mode == "hybrid" and build("sequential-ewc").mode == "sequential"


def test_every_hbat_block_default_builds():
    """The recipe's hbat defaults (config/recipe.py) are valid settings of the registry entry of the same name."""
    from tandem.config.recipe import HBATConfig

    hbat = HBATConfig()
    for name in names():
        assert isinstance(build(name, **getattr(hbat, name)), Regularizer), name


def test_unknown_name_lists_names_and_aliases():
    with pytest.raises(ValueError, match=r"unknown regularizer 'ewc3'; known: ewc, freeze, fisher, l2, l1 \(older"):
        build("ewc3")


def test_every_regularizer_satisfies_the_protocol_and_runs_a_stage_pair():
    data = StageData(lambda n: [(torch.tensor([1.0, 0.0]), 2.0)][:n])

    def logp(model, batch):
        x, y = batch
        return -0.5 * (y - (model.a * x).sum()) ** 2

    for name in names():
        reg = build(name, logp_fn=logp) if name == "fisher" else build(name)
        assert isinstance(reg, Regularizer), name
        model = Toy()
        for st, a in ((IFA1, [1, 1]), (HPA1, [2, 1])):
            reg.before_stage(model, st)
            model.set(a, [[1, 1], [1, 1]], [1, 1, 1])
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
            reg.grad_term(model)
            assert isinstance(reg.last_penalty, float)
            reg.after_stage(model, st, data)
        rep = reg.report()
        if name in ("ewc", "freeze"):
            assert [s["name"] for s in rep["stages"]] == [IFA1.name, HPA1.name] and set(rep["tensors"]) == {"a", "b", "c"}
        else:
            assert rep is None
        if name == "fisher":
            assert [s["examples"] for s in reg.stages] == [1, 1]
            assert reg.fisher["ifa"].tensors()["a"].tolist() == [1.0, 0.0]  # residual 2 - 1 = 1, grad r * x = [1, 0]
        assert isinstance(reg.state_dict(), dict)


def test_stage_data_is_frozen_and_no_data_is_empty():
    assert NO_DATA.single_batches(5) == []
    with pytest.raises(dataclasses.FrozenInstanceError):
        NO_DATA.single_batches = lambda n: [{}]


@pytest.mark.parametrize("package", ["regularizers", "objectives"])
def test_no_attribute_probing(package):
    """No hasattr/getattr dispatch in the regularizers and the offline objectives (PPO excluded: not ours)."""
    bad = []
    for path in sorted((SRC / package).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr"):
                bad.append(f"{path.name}:{node.lineno} {node.func.id}")
            if isinstance(node, ast.Compare) and any(isinstance(x, ast.Attribute) and x.attr == "__name__"
                                                     for x in ast.walk(node)):
                bad.append(f"{path.name}:{node.lineno} class-name comparison")
    assert bad == []
