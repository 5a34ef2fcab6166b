"""Every loss against a value computed by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from tandem.objectives.dpo import DPO, dpo_loss
from tandem.objectives.registry import build
from tandem.objectives.reward import bradley_terry_loss
from tandem.objectives.sft import sft_loss


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_sft_loss_is_token_mean_nll():
    lp = torch.tensor([math.log(0.5), math.log(0.25), math.log(0.125)])
    assert float(sft_loss(lp)) == pytest.approx((math.log(2) + math.log(4) + math.log(8)) / 3)


def test_bradley_terry_by_hand():
    rc, rr = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    expected = (-math.log(sig(1.0)) - math.log(sig(-1.0))) / 2
    assert float(bradley_terry_loss(rc, rr)) == pytest.approx(expected)
    centred = expected + 0.1 * ((3.0**2) + (1.0**2)) / 2
    assert float(bradley_terry_loss(rc, rr, center_coef=0.1)) == pytest.approx(centred)


# h = (pc - refc) - (pr - refr) = (-3 - -4) - (-5 - -4.5) = 1 + 0.5 = 1.5
H = torch.tensor([1.5])


def test_dpo_sigmoid_by_hand():
    assert float(dpo_loss(H, beta=0.1)) == pytest.approx(-math.log(sig(0.15)))


def test_cdpo_label_smoothing_by_hand():
    eps = 0.2
    expected = -(1 - eps) * math.log(sig(0.15)) - eps * math.log(sig(-0.15))
    assert float(dpo_loss(H, beta=0.1, label_smoothing=eps)) == pytest.approx(expected)


def test_ipo_by_hand():
    assert float(dpo_loss(H, beta=0.1, loss_type="ipo")) == pytest.approx((1.5 - 5.0) ** 2)


def test_hinge_by_hand():
    assert float(dpo_loss(H, beta=0.1, loss_type="hinge")) == pytest.approx(1 - 0.15)
    assert float(dpo_loss(torch.tensor([20.0]), beta=0.1, loss_type="hinge")) == 0.0


class FixedLogps(DPO):
    """DPO with the policy log-probs given directly (sums and token counts per sequence)."""

    def __init__(self, sums, counts, **kw):
        super().__init__(**kw)
        self.sums, self.counts = torch.tensor(sums, requires_grad=True), torch.tensor(counts)

    def _logps(self, model, batch):
        return self.sums, self.counts, len(self.sums) // 2


def test_dpo_objective_metrics_and_nll_anchor():
    batch = {"ref_chosen_logp": torch.tensor([-4.0]), "ref_rejected_logp": torch.tensor([-4.5])}
    obj = FixedLogps([-3.0, -5.0], [2.0, 4.0], beta=0.1, nll_coef=0.5)
    loss, m = obj(None, batch)
    nll = 3.0 / 2  # mean token NLL of the chosen response
    assert float(loss) == pytest.approx(-math.log(sig(0.15)) + 0.5 * nll)
    assert m["rewards/chosen"] == pytest.approx(0.1 * 1.0)
    assert m["rewards/rejected"] == pytest.approx(0.1 * -0.5)
    assert m["rewards/margin"] == pytest.approx(0.15)
    assert m["rewards/accuracy"] == 1.0
    assert m["chosen_logp"] == -3.0 and m["rejected_logp"] == -5.0


def test_dpo_average_logps():
    batch = {"ref_chosen_logp": torch.tensor([-1.0]), "ref_rejected_logp": torch.tensor([-1.0])}
    obj = FixedLogps([-3.0, -5.0], [2.0, 4.0], beta=1.0, average_logps=True)
    loss, _ = obj(None, batch)
    # h = (-1.5 + 1) - (-1.25 + 1) = -0.25
    assert float(loss) == pytest.approx(-math.log(sig(-0.25)))


def test_registry_errors_name_objective_and_argument():
    with pytest.raises(ValueError, match=r"unknown objective .dpoo.; known: dpo, .*reward, sft"):
        build("dpoo")
    with pytest.raises(TypeError, match="betta"):
        build("dpo", betta=0.1)
    with pytest.raises(ValueError, match="loss_type"):
        build("dpo", loss_type="kto")
