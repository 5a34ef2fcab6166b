"""Direct preference optimisation and its variants, on per-sequence log-probs.

For each pair, with ``logp`` the summed log-prob of the response tokens under the policy and ``ref`` the same
under the reference (the model at the start of the stage):

    h = (logp_c - ref_c) - (logp_r - ref_r)

    sigmoid (DPO, Rafailov et al. 2023):   -log sigmoid(beta h)
    label smoothing eps (cDPO):            -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)
    ipo (Azar et al. 2023):                (h - 1 / (2 beta))^2
    hinge (SLiC, Zhao et al. 2023):        max(0, 1 - beta h)

and TRL's ``robust``, ``bco_pair``, ``sppo_hard``, ``nca_pair``, ``apo_zero``, ``apo_down`` and ``exo_pair``, which
also read the chosen and rejected log-ratios on their own (every formula: :mod:`tandem.objectives.dpo_losses`, one
function and one table line each). ``label_smoothing`` applies to ``sigmoid``, ``robust`` and ``exo_pair``.

The loss is the mean over pairs. ``average_logps=True`` replaces every summed log-prob (policy and reference)
by the mean log-prob per response token, as often done for IPO; ``beta`` then acts on that scale.
``nll_coef`` adds ``nll_coef * NLL_c`` with NLL_c the token-level mean negative log-likelihood of the chosen
responses (sum of their token NLLs / their token count): the "anchor" that keeps the chosen likelihood from
falling (RPO-style).

Reference log-probs are computed once per stage by ``DPO.prepare`` (one no-grad pass, eval mode) and carried in
the features as ``ref_chosen_logp`` / ``ref_rejected_logp``, in the same units as the policy log-probs they are
compared with: summed log-probs, or per-token means when ``average_logps`` (precomputed values must follow the
same convention). So no reference model is held while training.

Metrics: ``loss``, ``chosen_logp`` / ``rejected_logp`` (mean policy log-probs, averaged per token when
``average_logps``), ``rewards/chosen = beta (logp_c - ref_c)``, ``rewards/rejected``, ``rewards/margin =
beta h``, ``rewards/accuracy`` (fraction of pairs with h > 0), and ``nll_chosen`` when ``nll_coef`` is set.
"""

from __future__ import annotations

import torch

from tandem.objectives.dpo_losses import LOSSES, MARGIN_ONLY, SMOOTHED, pair_loss
from tandem.objectives.logprobs import sequence_logps

LOSS_TYPES = tuple(LOSSES)
REF_KEYS = ("ref_chosen_logp", "ref_rejected_logp")


def logratio_margin(logp_chosen, logp_rejected, ref_chosen, ref_rejected) -> torch.Tensor:
    """``h = (logp_c - ref_c) - (logp_r - ref_r)`` per pair."""
    return (logp_chosen - ref_chosen) - (logp_rejected - ref_rejected)


def dpo_loss(h: torch.Tensor, beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-pair loss for the log-ratio margin ``h`` of the loss types that read ``h`` alone (sigmoid, ipo, hinge,
    robust, exo_pair; formulas in :mod:`tandem.objectives.dpo_losses`); take ``.mean()``."""
    if loss_type not in MARGIN_ONLY:
        raise ValueError(f"dpo loss_type {loss_type!r}: dpo_loss takes h alone, for {MARGIN_ONLY}; the others read "
                         "the chosen and rejected log-ratios: use tandem.objectives.dpo_losses.pair_loss")
    return pair_loss(h, torch.zeros_like(h), beta, loss_type, label_smoothing)


def chosen_nll(logp_sum_chosen: torch.Tensor, n_tokens_chosen: torch.Tensor) -> torch.Tensor:
    """Token-level mean NLL of the chosen responses: ``-sum(logp_sum_c) / sum(n_tokens_c)``."""
    return -logp_sum_chosen.sum() / n_tokens_chosen.sum().clamp(min=1)


class DPO:
    """DPO-family objective on preference batches (see the module docstring)."""

    data_kind = "preference"
    unit = "examples"

    def __init__(self, beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
                 nll_coef: float = 0.0, average_logps: bool = False):
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"dpo loss_type {loss_type!r}: choose one of {', '.join(LOSS_TYPES)}")
        if not beta > 0:
            raise ValueError(f"dpo beta must be > 0, got {beta}")
        if not 0 <= label_smoothing < 0.5:
            raise ValueError(f"dpo label_smoothing must be in [0, 0.5), got {label_smoothing}")
        if label_smoothing and loss_type not in SMOOTHED:
            raise ValueError(f"dpo label_smoothing applies to loss_type {', '.join(SMOOTHED)}, not {loss_type!r}")
        if nll_coef < 0:
            raise ValueError(f"dpo nll_coef must be >= 0, got {nll_coef}")
        self.beta, self.loss_type, self.label_smoothing = beta, loss_type, label_smoothing
        self.nll_coef, self.average_logps = nll_coef, average_logps

    def prepare(self, model, features, batch_fn, batch_size: int = 16):
        """Features with ``ref_chosen_logp`` / ``ref_rejected_logp`` (summed log-probs of the model as it is now,
        in eval mode; per-token means when ``average_logps``). Features that already carry both keep their values;
        the model's train/eval mode is restored."""
        return reference_values(model, features, batch_fn, self._reference_logps, batch_size)

    def _reference_logps(self, model, batch, b: int) -> torch.Tensor:
        s, count = sequence_logps(model, batch, num_seqs=2 * b)
        return s / count.clamp(min=1) if self.average_logps else s

    def _logps(self, model, batch):
        """``(logp_sum[2B], n_tokens[2B], B)`` of the policy on a preference batch."""
        b = int(batch["ref_chosen_logp"].shape[0])
        s, count = sequence_logps(model, batch, num_seqs=2 * b)
        return s, count, b

    def __call__(self, model, batch):
        if not all(k in batch for k in REF_KEYS):
            raise KeyError("dpo batch has no ref_chosen_logp / ref_rejected_logp: run DPO.prepare on the features "
                           "first (the engine does this at the start of each stage)")
        s, count, b = self._logps(model, batch)
        logp = s / count.clamp(min=1) if self.average_logps else s
        pc, pr = logp[:b], logp[b:]
        ref_c = batch["ref_chosen_logp"].to(pc)
        ref_r = batch["ref_rejected_logp"].to(pr)
        rc, rr = pc - ref_c, pr - ref_r
        h = rc - rr
        loss = pair_loss(rc, rr, self.beta, self.loss_type, self.label_smoothing).mean()
        metrics = {}
        if self.nll_coef:
            nll = chosen_nll(s[:b], count[:b])
            loss = loss + self.nll_coef * nll
            metrics["nll_chosen"] = float(nll.detach())
        d = lambda x: float(x.detach().float().mean())  # noqa: E731
        metrics.update({
            "loss": float(loss.detach()),
            "chosen_logp": d(pc),
            "rejected_logp": d(pr),
            "rewards/chosen": self.beta * d(rc),
            "rewards/rejected": self.beta * d(rr),
            "rewards/margin": self.beta * d(h),
            "rewards/accuracy": float((h > 0).float().mean()),
        })
        return loss, metrics


@torch.no_grad()
def reference_values(model, features: list[dict], batch_fn, score, batch_size: int = 16) -> list[dict]:
    """One no-grad pass (eval mode, mode restored) storing ``score(model, batch, B)[:B]`` as ``ref_chosen_logp``
    and ``[B:]`` as ``ref_rejected_logp`` in each preference feature; features that carry both keep them. Shared by
    the preference objectives that compare against a reference (DPO, sparse token weighting)."""
    todo = [i for i, f in enumerate(features) if not all(k in f for k in REF_KEYS)]
    if not todo:
        return features
    out = list(features)
    was = model.training
    model.eval()
    try:
        for start in range(0, len(todo), batch_size):
            idx = todo[start : start + batch_size]
            chunk = [{k: v for k, v in features[i].items() if k not in REF_KEYS} for i in idx]
            b = len(chunk)
            s = score(model, batch_fn(chunk), b).float().cpu()
            for j, i in enumerate(idx):
                out[i] = {**features[i], "ref_chosen_logp": float(s[j]), "ref_rejected_logp": float(s[b + j])}
    finally:
        model.train(was)
    return out
