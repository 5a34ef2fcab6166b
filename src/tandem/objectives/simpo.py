"""SimPO, simple preference optimisation (Meng et al. 2024, arXiv 2405.14734): a length-normalised,
reference-free margin loss with a target margin.

For each pair, with ``logp`` the summed log-prob of a response and ``|y|`` its token count:

    L = -log sigmoid(beta * logp_w / |y_w| - beta * logp_l / |y_l| - gamma)

averaged over pairs. The implicit reward ``beta * logp / |y|`` is the mean per-token log-prob, so it does not
favour long responses, and no reference model is needed (``prepare`` returns the features unchanged).

Defaults: ``beta = 2.0`` and ``gamma = 1.0``, i.e. ``gamma / beta = 0.5``. The authors' released settings use
``beta`` 2.0-2.5 and a ratio ``gamma / beta`` (their code's ``gamma_beta_ratio``) between about 0.15 and 0.8;
their Llama-3-8B-Base setting is ``beta = 2.0`` with ratio 0.5, i.e. ``gamma = 1.0``. Keep the ratio when changing
``beta``. SimPO wants a lower learning rate than DPO
(the paper uses 3e-7 to 1e-6 for full fine-tuning of 7-8B models).

Metrics: ``loss``, ``chosen_logp`` / ``rejected_logp`` (mean summed log-probs, as for DPO),
``chosen_avg_logp`` / ``rejected_avg_logp`` (mean per-token log-probs), ``rewards/chosen`` /
``rewards/rejected`` (mean ``beta * logp / |y|``), ``rewards/margin`` (their mean difference, before
``gamma``), ``rewards/accuracy`` (fraction of pairs whose chosen reward is higher).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tandem.objectives.logprobs import pair_logps


def simpo_loss(avg_chosen: torch.Tensor, avg_rejected: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """Per-pair ``-log sigmoid(beta * (avg_chosen - avg_rejected) - gamma)``; take ``.mean()``."""
    return -F.logsigmoid(beta * (avg_chosen - avg_rejected) - gamma)


class SimPO:
    """SimPO on preference batches (see the module docstring)."""

    data_kind = "preference"
    unit = "examples"

    def __init__(self, beta: float = 2.0, gamma: float = 1.0):
        if not beta > 0:
            raise ValueError(f"simpo beta must be > 0, got {beta}")
        if not gamma >= 0:
            raise ValueError(f"simpo gamma must be >= 0, got {gamma}")
        self.beta, self.gamma = float(beta), float(gamma)

    def prepare(self, model, features, batch_fn):
        return features

    def __call__(self, model, batch):
        s, count, b = pair_logps(model, batch)
        avg = s / count.clamp(min=1)
        rc, rr = self.beta * avg[:b], self.beta * avg[b:]
        loss = simpo_loss(avg[:b], avg[b:], self.beta, self.gamma).mean()
        d = lambda x: float(x.detach().float().mean())  # noqa: E731
        return loss, {
            "loss": float(loss.detach()),
            "chosen_logp": d(s[:b]),
            "rejected_logp": d(s[b:]),
            "chosen_avg_logp": d(avg[:b]),
            "rejected_avg_logp": d(avg[b:]),
            "rewards/chosen": d(rc),
            "rewards/rejected": d(rr),
            "rewards/margin": d(rc - rr),
            "rewards/accuracy": float((rc > rr).float().mean()),
        }
