import math

import pytest
import torch
from helpers_merging import tiny_llama

from tandem.merging.groups import tensor_alphas
from tandem.merging.lerp import Merger, merge_names
from tandem.merging.search import (
    global_sweep,
    group_ratios,
    learn_group_ratios,
    lm_loss,
    merged_evaluator,
    search_group_ratios,
)


def test_global_sweep_calls_evaluate_per_alpha():
    calls = []

    def evaluate(alphas):
        calls.append(list(alphas))
        return {"reward": alphas[0], "tax": alphas[0] ** 2}

    out = global_sweep(evaluate, [0.0, 0.5, 1.0], n_groups=3)
    assert calls == [[0.0] * 3, [0.5] * 3, [1.0] * 3]
    assert out[1] == {"alpha": 0.5, "alphas": [0.5, 0.5, 0.5], "reward": 0.5, "tax": 0.25}
    with pytest.raises(KeyError, match="'reward' and 'tax'"):
        global_sweep(lambda a: {"reward": 1.0}, [0.5])


def test_search_group_ratios_seeded_and_in_range():
    def evaluate(a):
        return {"reward": a[0] + 0.5 * a[1], "tax": a[0] ** 2 + a[1] ** 2}

    r1 = search_group_ratios(evaluate, n_groups=2, n_trials=12, seed=3)
    r2 = search_group_ratios(evaluate, n_groups=2, n_trials=12, seed=3)
    assert len(r1) == 12 and [p["alphas"] for p in r1] == [p["alphas"] for p in r2]
    assert all(len(p["alphas"]) == 2 and all(0.0 <= x <= 1.0 for x in p["alphas"]) for p in r1)
    p = r1[0]
    assert p["reward"] == pytest.approx(p["alphas"][0] + 0.5 * p["alphas"][1])
    r3 = search_group_ratios(evaluate, n_groups=2, n_trials=12, seed=4)
    assert [p["alphas"] for p in r3] != [p["alphas"] for p in r1]


def test_merged_evaluator_merges_into_live_model():
    m0 = tiny_llama(0)
    m1 = tiny_llama(1)
    s0 = {n: p.detach().clone() for n, p in m0.named_parameters()}
    s1 = {n: p.detach().clone() for n, p in m1.named_parameters()}
    n = "model.layers.2.mlp.up_proj.weight"
    ev = merged_evaluator(Merger(s0, s1), m1, "layerwise",
                          lambda m: {"reward": float(dict(m.named_parameters())[n].detach().sum()), "tax": 0.0})
    res = ev([0.0, 0.0, 0.25])
    assert res["reward"] == pytest.approx(float((0.75 * s0[n] + 0.25 * s1[n]).sum()), abs=1e-4)


def test_group_ratios_hand_values():
    r = group_ratios(torch.tensor([0.0, math.log(2.0)]), 0.3)  # softmax [1/3, 2/3] * 2 * 0.3
    torch.testing.assert_close(r, torch.tensor([0.2, 0.4]))
    r = group_ratios(torch.tensor([0.0, math.log(3.0)]), 0.9)  # [0.45, 1.35] -> clamp
    torch.testing.assert_close(r, torch.tensor([0.45, 1.0]))


def _train(model, batch, steps=25):
    import copy

    m = copy.deepcopy(model).train()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        lm_loss(m, batch).backward()
        opt.step()
    return m.eval()


def test_learn_group_ratios_keeps_mean_and_lowers_loss():
    m0 = tiny_llama(0, layers=3)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (2, 12), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100
    batch = {"input_ids": ids, "labels": labels,
             "position_ids": torch.arange(12).expand(2, 12)}
    m1 = _train(m0, batch)
    s0 = {n: p.detach().clone() for n, p in m0.named_parameters()}
    s1 = {n: p.detach().clone() for n, p in m1.named_parameters()}
    live = tiny_llama(5, layers=3)
    before = {n: p.detach().clone() for n, p in live.named_parameters()}
    hist = []
    # 3 groups * mean 0.3 = 0.9 < 1: the clamp can never act, so the mean is exact
    ratios = learn_group_ratios(live, s0, s1, "block3", [batch], mean_ratio=0.3, steps=15, lr=0.1, history=hist)
    assert len(ratios) == 3
    assert sum(ratios) / 3 == pytest.approx(0.3, abs=1e-6)
    assert max(ratios) - min(ratios) > 1e-3
    assert all(torch.equal(p, before[n]) for n, p in live.named_parameters())  # live weights untouched

    names = merge_names(live)
    merger = Merger(s0, s1)

    def loss_at(rs):
        merger.merge_into(live, tensor_alphas(names, "block3", rs))
        with torch.no_grad():
            return float(lm_loss(live, batch))

    assert hist[0] == pytest.approx(loss_at([0.3] * 3), abs=1e-5)  # starts at the uniform ratio
    assert loss_at(ratios) < loss_at([0.3] * 3) - 1e-3
