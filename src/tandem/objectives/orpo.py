"""ORPO, odds-ratio preference optimisation (Hong et al. 2024, arXiv 2403.07691): SFT and preference in one
loss, without a reference model.

For each pair, with ``lbar = logp / |y|`` the length-normalised (mean per-token) log-prob of a response:

    log odds(y)  = lbar - log(1 - exp(lbar))              (odds = P / (1 - P), P = exp(lbar))
    L_OR         = -log sigmoid(log odds(y_w) - log odds(y_l))
    L            = L_SFT + lambda * mean over pairs of L_OR

``L_SFT`` is the token-mean negative log-likelihood of the chosen responses of the batch (their summed token NLL
over their token count, as in :func:`tandem.objectives.dpo.chosen_nll`). ``log(1 - exp(x))`` is evaluated
stably (``log(-expm1(x))`` near 0, ``log1p(-exp(x))`` below ``-log 2``) with ``lbar`` capped at ``-1e-6``, so a
response of probability ~1 gives a large finite log-odds, not infinity.

Defaults: ``lam = 0.1`` (the paper's lambda, ``beta`` in TRL's ORPOTrainer). No reference pass: ``prepare``
returns the features unchanged. ``unit = "examples"``: shards are weighted by pairs (the SFT term is a token mean
within each shard).

Metrics: ``loss``, ``sft_loss``, ``or_loss`` (mean ``L_OR``), ``log_odds_ratio`` (mean ``log odds(y_w) -
log odds(y_l)``), ``chosen_logp`` / ``rejected_logp`` (mean summed log-probs, as for DPO),
``chosen_avg_logp`` / ``rejected_avg_logp`` (mean ``lbar``), ``rewards/accuracy`` (fraction of pairs with a
positive log-odds ratio).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tandem.objectives.dpo import chosen_nll
from tandem.objectives.logprobs import pair_logps

MAX_AVG_LOGP = -1e-6


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, stable at both ends (Maechler 2012)."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def log_odds(avg_logp: torch.Tensor) -> torch.Tensor:
    """``log(P / (1 - P))`` with ``log P = avg_logp`` (capped at ``MAX_AVG_LOGP``)."""
    x = avg_logp.clamp(max=MAX_AVG_LOGP)
    return x - log1mexp(x)


def orpo_loss(logp_sum: torch.Tensor, n_tokens: torch.Tensor, num_pairs: int, lam: float):
    """``(loss, sft_loss, or_losses[B], log_odds_ratio[B])`` from summed log-probs and token counts (chosen
    first, then rejected)."""
    b = num_pairs
    avg = logp_sum / n_tokens.clamp(min=1)
    ratio = log_odds(avg[:b]) - log_odds(avg[b:])
    or_losses = -F.logsigmoid(ratio)
    sft = chosen_nll(logp_sum[:b], n_tokens[:b])
    return sft + lam * or_losses.mean(), sft, or_losses, ratio


class ORPO:
    """Odds-ratio preference optimisation on preference batches (see the module docstring)."""

    data_kind = "preference"
    unit = "examples"

    def __init__(self, lam: float = 0.1):
        if not lam >= 0:
            raise ValueError(f"orpo lam must be >= 0, got {lam}")
        self.lam = float(lam)

    def prepare(self, model, features, batch_fn):
        return features

    def __call__(self, model, batch):
        s, count, b = pair_logps(model, batch)
        loss, sft, or_losses, ratio = orpo_loss(s, count, b, self.lam)
        avg = (s / count.clamp(min=1)).detach()
        d = lambda x: float(x.detach().float().mean())  # noqa: E731
        return loss, {
            "loss": float(loss.detach()),
            "sft_loss": float(sft.detach()),
            "or_loss": d(or_losses),
            "log_odds_ratio": d(ratio),
            "chosen_logp": d(s[:b]),
            "rejected_logp": d(s[b:]),
            "chosen_avg_logp": d(avg[:b]),
            "rejected_avg_logp": d(avg[b:]),
            "rewards/accuracy": float((ratio > 0).float().mean()),
        }
