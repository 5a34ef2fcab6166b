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

``nll_on`` says which tokens ``L_SFT`` covers: ``"response"`` (the default: the chosen response's tokens, as the
SFT objective and the paper's equation 6) or ``"prompt_response"`` (every token of the chosen sequence but its first,
prompt included, as TRL's ORPOTrainer computes it for decoder-only models: its ``cross_entropy_loss`` on the
concatenated input ids). The odds ratio always reads the response tokens. With ``"prompt_response"`` the forward
computes log-probs of the prompt tokens too (of the rejected sequences as well: they share one pass).

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
from tandem.objectives.logprobs import IGNORE, pair_logps, token_logps

MAX_AVG_LOGP = -1e-6
NLL_ON = ("response", "prompt_response")


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, stable at both ends (Maechler 2012)."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def log_odds(avg_logp: torch.Tensor) -> torch.Tensor:
    """``log(P / (1 - P))`` with ``log P = avg_logp`` (capped at ``MAX_AVG_LOGP``)."""
    x = avg_logp.clamp(max=MAX_AVG_LOGP)
    return x - log1mexp(x)


def orpo_loss(logp_sum: torch.Tensor, n_tokens: torch.Tensor, num_pairs: int, lam: float,
              sft: torch.Tensor | None = None):
    """``(loss, sft_loss, or_losses[B], log_odds_ratio[B])`` from summed log-probs and token counts of the responses
    (chosen first, then rejected); ``sft`` replaces the chosen responses' token-mean NLL (``nll_on="prompt_response"``)."""
    b = num_pairs
    avg = logp_sum / n_tokens.clamp(min=1)
    ratio = log_odds(avg[:b]) - log_odds(avg[b:])
    or_losses = -F.logsigmoid(ratio)
    if sft is None:
        sft = chosen_nll(logp_sum[:b], n_tokens[:b])
    return sft + lam * or_losses.mean(), sft, or_losses, ratio


class ORPO:
    """Odds-ratio preference optimisation on preference batches (see the module docstring)."""

    data_kind = "preference"
    unit = "examples"

    def __init__(self, lam: float = 0.1, nll_on: str = "response"):
        if not lam >= 0:
            raise ValueError(f"orpo lam must be >= 0, got {lam}")
        if nll_on not in NLL_ON:
            raise ValueError(f"orpo nll_on {nll_on!r}: choose one of {', '.join(NLL_ON)}")
        self.lam, self.nll_on = float(lam), nll_on

    def prepare(self, model, features, batch_fn):
        return features

    def __call__(self, model, batch):
        if self.nll_on == "response":
            s, count, b = pair_logps(model, batch)
            loss, sft, or_losses, ratio = orpo_loss(s, count, b, self.lam)
        else:
            s, count, b, nll = prompt_response_logps(model, batch)
            loss, sft, or_losses, ratio = orpo_loss(s, count, b, self.lam, sft=nll)
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


def full_labels(batch: dict) -> torch.Tensor:
    """Every real token but the first of its sequence labelled with its own id (``-100`` elsewhere): TRL's ORPO NLL
    targets. Holds in the pack, pad and prefix-shared layouts (prefix tokens belong to the chosen sequence)."""
    real = (batch["seq_ids"] >= 0) & (batch["position_ids"] > 0)
    return torch.where(real, batch["input_ids"], torch.full_like(batch["input_ids"], IGNORE))


def prompt_response_logps(model, batch: dict):
    """``(logp_sum[2B], n_tokens[2B], B, nll)`` in one forward: the responses' summed log-probs and token counts (for
    the odds ratio) and the token-mean NLL of the chosen sequences over prompt and response (:func:`full_labels`)."""
    n = int(batch["seq_ids"].max()) + 1
    if n % 2:
        raise ValueError(f"preference batch has {n} sequences; it must have 2B (chosen then rejected)")
    b = n // 2
    full = full_labels(batch)
    logps, seq = token_logps(model, {**batch, "labels": full})
    resp = (batch["labels"][:, 1:] != IGNORE)[full[:, 1:] != IGNORE]
    s = torch.zeros(n, dtype=logps.dtype, device=logps.device).index_add(0, seq[resp], logps[resp])
    count = torch.zeros(n, dtype=logps.dtype, device=logps.device).index_add(0, seq[resp], torch.ones_like(logps[resp]))
    chosen = seq < b
    nll = -logps[chosen].sum() / chosen.sum().clamp(min=1)
    return s, count, b, nll
