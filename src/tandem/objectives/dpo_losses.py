"""The per-pair losses of DPO's ``loss_type`` (:class:`tandem.objectives.dpo.DPO`): one function and one line of
``LOSSES`` each.

Every function takes the chosen and rejected log-ratios of a batch of pairs, ``rc = logp_c - ref_c`` and
``rr = logp_r - ref_r`` (``[B]`` each), ``beta`` and the label smoothing ``eps``, and returns the ``[B]`` per-pair
losses (the objective takes their mean). With ``h = rc - rr``:

    sigmoid   (DPO, Rafailov et al. 2023)       -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)
    ipo       (Azar et al. 2023)                (h - 1 / (2 beta))^2
    hinge     (SLiC, Zhao et al. 2023)          max(0, 1 - beta h)
    robust    (rDPO, Chowdhury et al. 2024)     (-(1 - eps) log sigmoid(beta h) + eps log sigmoid(-beta h)) / (1 - 2 eps)
    bco_pair  (BCO, Jung et al. 2024)           -log sigmoid(beta rc) - log sigmoid(-beta rr)
    sppo_hard (SPPO, Wu et al. 2024; P = 1/0)   (rc - 1 / (2 beta))^2 + (rr + 1 / (2 beta))^2
    nca_pair  (NCA, Chen et al. 2024)           -log sigmoid(beta rc) - log sigmoid(-beta rc) / 2 - log sigmoid(-beta rr) / 2
    apo_zero  (APO, D'Oosterlinck et al. 2024)  1 - sigmoid(beta rc) + sigmoid(beta rr)
    apo_down  (APO)                             sigmoid(beta rc) + 1 - sigmoid(beta h)
    exo_pair  (EXO, Ji et al. 2024, eq. 16)     q log(q / (1 - eps)) + (1 - q) log((1 - q) / eps),  q = sigmoid(beta h)

These are TRL 1.16's formulas (``DPOTrainer._compute_loss``, reverse-KL scores; ``tests/test_trl_parity.py`` runs
TRL's own code on the same inputs). Two differences, both documented in docs/methods.md: tandem's ``ipo`` uses the
summed log-probs unless ``average_logps`` (TRL 1.16 always divides IPO's scores by the completion lengths), and
``exo_pair`` with ``eps = 0`` uses ``eps = 1e-3`` (the EXO paper's value, and what TRL before 1.0 did; TRL 1.16 takes
0 literally, which makes ``log(1 - q) / eps`` infinite). ``bco_pair`` is TRL 1.16's stateless form (older TRL
versions subtracted a running mean of the rewards, ``delta``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

PairLoss = Callable[[torch.Tensor, torch.Tensor, float, float], torch.Tensor]
EXO_DEFAULT_EPS = 1e-3


def sigmoid(rc, rr, beta, eps):
    h = rc - rr
    return -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)


def ipo(rc, rr, beta, eps):
    return (rc - rr - 1 / (2 * beta)) ** 2


def hinge(rc, rr, beta, eps):
    return torch.relu(1 - beta * (rc - rr))


def robust(rc, rr, beta, eps):
    h = rc - rr
    return (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)


def bco_pair(rc, rr, beta, eps):
    return -F.logsigmoid(beta * rc) - F.logsigmoid(-beta * rr)


def sppo_hard(rc, rr, beta, eps):
    return (rc - 0.5 / beta) ** 2 + (rr + 0.5 / beta) ** 2


def nca_pair(rc, rr, beta, eps):
    return -F.logsigmoid(beta * rc) - 0.5 * F.logsigmoid(-beta * rc) - 0.5 * F.logsigmoid(-beta * rr)


def apo_zero(rc, rr, beta, eps):
    return 1 - torch.sigmoid(beta * rc) + torch.sigmoid(beta * rr)


def apo_down(rc, rr, beta, eps):
    return torch.sigmoid(beta * rc) + 1 - torch.sigmoid(beta * (rc - rr))


def exo_pair(rc, rr, beta, eps):
    eps = eps or EXO_DEFAULT_EPS
    z = beta * (rc - rr)
    return (torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps))
            + torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(eps)))


LOSSES: dict[str, PairLoss] = {  # loss_type -> per-pair loss; listed in this order in error messages
    "sigmoid": sigmoid,
    "ipo": ipo,
    "hinge": hinge,
    "robust": robust,
    "bco_pair": bco_pair,
    "sppo_hard": sppo_hard,
    "nca_pair": nca_pair,
    "apo_zero": apo_zero,
    "apo_down": apo_down,
    "exo_pair": exo_pair,
}
SMOOTHED = ("sigmoid", "robust", "exo_pair")  # the loss types that read label_smoothing
MARGIN_ONLY = ("sigmoid", "ipo", "hinge", "robust", "exo_pair")  # functions of h = rc - rr alone


def pair_loss(rc: torch.Tensor, rr: torch.Tensor, beta: float, loss_type: str = "sigmoid",
              label_smoothing: float = 0.0) -> torch.Tensor:
    """``[B]`` per-pair losses of ``loss_type`` (see the module docstring); take ``.mean()``."""
    if loss_type not in LOSSES:
        raise ValueError(f"dpo loss_type {loss_type!r}: choose one of {', '.join(LOSSES)}")
    return LOSSES[loss_type](rc, rr, beta, label_smoothing)
