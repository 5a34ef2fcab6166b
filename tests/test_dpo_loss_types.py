"""DPO's loss types (tandem.objectives.dpo_losses) against values computed by hand on tiny tensors, and through the
DPO objective on a tiny model (gradients flow, the recipe's loss_type reaches the formula)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers_objectives import make_batch, tiny_llama

from tandem.objectives.dpo import DPO, LOSS_TYPES, dpo_loss
from tandem.objectives.dpo_losses import LOSSES, pair_loss
from tandem.objectives.registry import build


def sig(x):
    return 1 / (1 + math.exp(-x))


def logsig(x):
    return math.log(sig(x))


# two pairs: chosen log-ratios rc, rejected log-ratios rr; beta = 0.5
RC, RR, BETA = [1.0, -0.4], [-1.0, 0.6], 0.5


def by_hand(loss_type: str, eps: float = 0.0) -> float:
    """The mean over the two pairs of the loss, written with math on floats."""
    out = []
    for rc, rr in zip(RC, RR):
        h, b = rc - rr, BETA
        if loss_type == "robust":
            v = (-(1 - eps) * logsig(b * h) + eps * logsig(-b * h)) / (1 - 2 * eps)
        elif loss_type == "bco_pair":
            v = -logsig(b * rc) - logsig(-b * rr)
        elif loss_type == "sppo_hard":
            v = (rc - 1 / (2 * b)) ** 2 + (rr + 1 / (2 * b)) ** 2
        elif loss_type == "nca_pair":
            v = -logsig(b * rc) - 0.5 * logsig(-b * rc) - 0.5 * logsig(-b * rr)
        elif loss_type == "apo_zero":
            v = (1 - sig(b * rc)) + sig(b * rr)
        elif loss_type == "apo_down":
            v = sig(b * rc) + (1 - sig(b * h))
        elif loss_type == "exo_pair":
            q = sig(b * h)
            v = q * math.log(q / (1 - eps)) + (1 - q) * math.log((1 - q) / eps)
        else:
            raise AssertionError(loss_type)
        out.append(v)
    return sum(out) / len(out)


@pytest.mark.parametrize("loss_type,eps", [("robust", 0.1), ("robust", 0.0), ("bco_pair", 0.0), ("sppo_hard", 0.0),
                                          ("nca_pair", 0.0), ("apo_zero", 0.0), ("apo_down", 0.0),
                                          ("exo_pair", 0.2), ("exo_pair", 1e-3)])
def test_each_new_loss_type_by_hand(loss_type, eps):
    got = pair_loss(torch.tensor(RC), torch.tensor(RR), BETA, loss_type, eps).mean()
    assert float(got) == pytest.approx(by_hand(loss_type, eps), rel=1e-6)


def test_hand_values_of_the_first_pair_written_out():
    """The first pair (rc = 1, rr = -1, beta = 0.5: beta h = 1) with the numbers written out."""
    rc, rr = torch.tensor([1.0]), torch.tensor([-1.0])
    # sppo_hard: (1 - 1)^2 + (-1 + 1)^2 = 0; bco_pair: -2 log sigmoid(0.5)
    assert float(pair_loss(rc, rr, 0.5, "sppo_hard")) == 0.0
    assert float(pair_loss(rc, rr, 0.5, "bco_pair")) == pytest.approx(2 * 0.4740769841801067)
    # apo_zero: 1 - sigmoid(0.5) + sigmoid(-0.5) = 2 sigmoid(-0.5)
    assert float(pair_loss(rc, rr, 0.5, "apo_zero")) == pytest.approx(2 * 0.3775406687981454)
    # apo_down: sigmoid(0.5) + 1 - sigmoid(1)
    assert float(pair_loss(rc, rr, 0.5, "apo_down")) == pytest.approx(0.6224593312018546 + 1 - 0.7310585786300049)
    # robust with eps = 0 is DPO's sigmoid loss
    assert float(pair_loss(rc, rr, 0.5, "robust")) == pytest.approx(0.31326168751822286)


def test_exo_pair_without_label_smoothing_uses_the_papers_epsilon():
    rc, rr = torch.tensor([0.3]), torch.tensor([0.1])
    assert float(pair_loss(rc, rr, 1.0, "exo_pair", 0.0)) == pytest.approx(float(pair_loss(rc, rr, 1.0, "exo_pair", 1e-3)))
    assert math.isfinite(float(pair_loss(rc, rr, 1.0, "exo_pair", 0.0)))


def test_the_margin_only_losses_keep_dpo_loss_of_h():
    h = torch.tensor([1.5])
    assert float(dpo_loss(h, 0.1, "robust", 0.1)) == pytest.approx(
        (-(0.9) * logsig(0.15) + 0.1 * logsig(-0.15)) / 0.8)
    with pytest.raises(ValueError, match="bco_pair.*chosen and rejected log-ratios"):
        dpo_loss(h, 0.1, "bco_pair")


def test_loss_types_listed_and_checked():
    assert LOSS_TYPES == tuple(LOSSES)
    for name in ("sigmoid", "ipo", "hinge", "robust", "bco_pair", "sppo_hard", "nca_pair", "apo_zero", "apo_down",
                 "exo_pair"):
        assert name in LOSS_TYPES
    with pytest.raises(ValueError, match="loss_type 'kto': choose one of sigmoid, ipo, hinge, robust"):
        build("dpo", loss_type="kto")
    with pytest.raises(ValueError, match="label_smoothing applies to loss_type sigmoid, robust, exo_pair, not 'apo_zero'"):
        build("dpo", loss_type="apo_zero", label_smoothing=0.1)
    build("dpo", loss_type="robust", label_smoothing=0.1)
    build("dpo", loss_type="exo_pair", label_smoothing=1e-3)


class FixedLogps(DPO):
    def __init__(self, sums, counts, **kw):
        super().__init__(**kw)
        self.sums, self.counts = torch.tensor(sums, requires_grad=True), torch.tensor(counts)

    def _logps(self, model, batch):
        return self.sums, self.counts, len(self.sums) // 2


@pytest.mark.parametrize("loss_type", ["robust", "bco_pair", "sppo_hard", "nca_pair", "apo_zero", "apo_down", "exo_pair"])
def test_the_objective_reads_the_chosen_and_rejected_log_ratios(loss_type):
    # policy sums [-3, -2 | -5, -4], references [-4, -1.6 | -4, -4.6]: rc = [1, -0.4], rr = [-1, 0.6]
    batch = {"ref_chosen_logp": torch.tensor([-4.0, -1.6]), "ref_rejected_logp": torch.tensor([-4.0, -4.6])}
    eps = 0.2 if loss_type == "exo_pair" else 0.0
    obj = FixedLogps([-3.0, -2.0, -5.0, -4.0], [2.0, 2.0, 3.0, 3.0], beta=BETA, loss_type=loss_type, label_smoothing=eps)
    loss, m = obj(None, batch)
    assert float(loss.detach()) == pytest.approx(by_hand(loss_type, eps), rel=1e-5)
    loss.backward()
    assert obj.sums.grad is not None and bool(torch.isfinite(obj.sums.grad).all())
    assert m["rewards/margin"] == pytest.approx(BETA * ((1.0 - -1.0) + (-0.4 - 0.6)) / 2, rel=1e-5)  # beta mean(h)


def test_every_loss_type_trains_a_tiny_model():
    torch.manual_seed(0)
    model = tiny_llama()
    seqs = [([1, 5, 6, 7], [-100, -100, 6, 7]), ([1, 5, 9, 3, 2], [-100, -100, 9, 3, 2]),
            ([1, 5, 8], [-100, -100, 8]), ([1, 5, 4, 4], [-100, -100, 4, 4])]
    for loss_type in LOSS_TYPES:
        obj = DPO(beta=0.5, loss_type=loss_type)
        feats_batch = make_batch(seqs, refs={"ref_chosen_logp": [-5.0, -7.0], "ref_rejected_logp": [-3.0, -6.0]})
        model.zero_grad()
        loss, m = obj(model, feats_batch)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert torch.isfinite(loss.detach()) and grads and any(float(g.abs().sum()) > 0 for g in grads), loss_type
        assert m["loss"] == pytest.approx(float(loss.detach()))
