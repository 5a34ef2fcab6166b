"""The authors' variant of the learned group ratios (issue 25, question d): normalised sigmoid, weighted L1 pull to
the initial ratio, and the 8/8/10 split of 26 layers; tandem's own (softmax, no pull, 9/9/8) stays the default."""

import math

import pytest
import torch

from tandem.config.taxblock import AdaptiveRatiosConfig
from tandem.merging.groups import parse_group_spec
from tandem.merging.search import group_ratios, learn_group_ratios, ratio_pull
from test_merging_search import _train, tiny_llama


def test_normalised_sigmoid_by_hand():
    # sigmoid(0) = 0.5, sigmoid(log 3) = 0.75 -> weights 0.4, 0.6 -> 2 groups * 0.5 * w = 0.4, 0.6
    r = group_ratios(torch.tensor([0.0, math.log(3.0)]), 0.5, "sigmoid")
    assert r.tolist() == pytest.approx([0.4, 0.6])
    # softmax of the same logits: 0.25, 0.75 -> 0.25, 0.75
    assert group_ratios(torch.tensor([0.0, math.log(3.0)]), 0.5).tolist() == pytest.approx([0.25, 0.75])
    with pytest.raises(ValueError, match="parametrisation"):
        group_ratios(torch.zeros(2), 0.5, "tanh")


def test_weighted_l1_pull_by_hand():
    assert float(ratio_pull(torch.tensor([0.4, 0.6]), 0.5, [1.0, 3.0])) == pytest.approx(0.1 + 0.3)
    assert float(ratio_pull(torch.tensor([0.2, 0.5]), 0.5)) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="2 groups"):
        ratio_pull(torch.tensor([0.2, 0.5]), 0.5, [1.0])


def test_tail_split_puts_the_remainder_last():
    assert [len(g) for g in parse_group_spec("block3-tail", 26)] == [8, 8, 10]
    assert [len(g) for g in parse_group_spec("block3", 26)] == [9, 9, 8]
    assert parse_group_spec("block3-tail", 6) == parse_group_spec("block3", 6)


def test_a_strong_pull_keeps_the_ratios_at_their_start():
    m0 = tiny_llama(0, layers=3)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :4] = -100
    batch = {"input_ids": ids, "labels": labels, "position_ids": torch.arange(12).expand(2, 12)}
    s0 = {n: p.detach().clone() for n, p in m0.named_parameters()}
    s1 = {n: p.detach().clone() for n, p in _train(m0, batch).named_parameters()}
    kw = dict(mean_ratio=0.3, steps=10, lr=0.1, parametrisation="sigmoid")
    free = learn_group_ratios(tiny_llama(5, layers=3), s0, s1, "block3", [batch], **kw)
    held = learn_group_ratios(tiny_llama(5, layers=3), s0, s1, "block3", [batch], pull=100.0, **kw)
    assert sum(free) / 3 == pytest.approx(0.3, abs=1e-6)  # the normalised sigmoid keeps the mean too
    assert max(abs(r - 0.3) for r in held) < max(abs(r - 0.3) for r in free)


def test_recipe_fields_default_to_tandems_own():
    c = AdaptiveRatiosConfig()
    assert (c.parametrisation, c.pull, c.pull_weights) == ("softmax", 0.0, None)
    with pytest.raises(ValueError):
        AdaptiveRatiosConfig(parametrisation="tanh")
