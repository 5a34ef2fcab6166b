"""Direct preference optimisation and its variants, on per-sequence log-probs.

With h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)) per pair:

  sigmoid (DPO, Rafailov et al.):          -log sigmoid(beta h)
  label smoothing eps (cDPO):              -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)
  ipo (Azar et al.):                        (h - 1 / (2 beta))^2
  hinge (SLiC):                             max(0, 1 - beta h)

``average_logps`` uses the mean token log-prob of each response instead of the sum (common for IPO).
``nll_coef`` adds nll_coef * (mean token NLL of the chosen responses): the "anchor" that keeps the chosen
likelihood from falling. Reference log-probs are computed once per stage by ``prepare`` (no grad) and carried
in the features as ``ref_chosen_logp`` / ``ref_rejected_logp``, so no reference model is held while training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tandem.objectives.logprobs import sequence_logps

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def dpo_loss(h: torch.Tensor, beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-pair loss for the log-ratio margin ``h`` (see the module docstring)."""
    if loss_type == "sigmoid":
        return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    if loss_type == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    if loss_type == "hinge":
        return torch.relu(1 - beta * h)
    raise ValueError(f"dpo loss_type {loss_type!r}: choose one of {LOSS_TYPES}")


class DPO:
    data_kind = "preference"
    unit = "examples"

    def __init__(self, beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
                 nll_coef: float = 0.0, average_logps: bool = False):
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"dpo loss_type {loss_type!r}: choose one of {LOSS_TYPES}")
        if not 0 <= label_smoothing < 0.5:
            raise ValueError(f"dpo label_smoothing must be in [0, 0.5), got {label_smoothing}")
        self.beta, self.loss_type, self.label_smoothing = beta, loss_type, label_smoothing
        self.nll_coef, self.average_logps = nll_coef, average_logps

    def _logps(self, model, batch):
        n = int(batch["seq_ids"].max()) + 1
        s, count = sequence_logps(model, batch, num_seqs=n)
        return s, count, n // 2

    @torch.no_grad()
    def prepare(self, model, features, batch_fn, batch_size: int = 16):
        """Add reference log-probs (the model as it is now, in eval mode) to features that lack them."""
        if all("ref_chosen_logp" in f for f in features):
            return features
        was = model.training
        model.eval()
        out = []
        for i in range(0, len(features), batch_size):
            chunk = features[i : i + batch_size]
            s, count, b = self._logps(model, batch_fn(chunk))
            if self.average_logps:
                s = s / count.clamp(min=1)
            for j, f in enumerate(chunk):
                out.append({**f, "ref_chosen_logp": float(s[j]), "ref_rejected_logp": float(s[b + j])})
        model.train(was)
        return out

    def __call__(self, model, batch):
        s, count, b = self._logps(model, batch)
        logp = s / count.clamp(min=1) if self.average_logps else s
        pc, pr = logp[:b], logp[b:]
        rc = pc - batch["ref_chosen_logp"].to(pc)
        rr = pr - batch["ref_rejected_logp"].to(pr)
        losses = dpo_loss(rc - rr, self.beta, self.loss_type, self.label_smoothing)
        loss = losses.mean()
        metrics = {}
        if self.nll_coef:
            nll = -(s[:b].sum() / count[:b].sum())
            loss = loss + self.nll_coef * nll
            metrics["nll_chosen"] = float(nll.detach())
        d = lambda x: float(x.detach().mean())  # noqa: E731
        metrics.update({
            "loss": float(loss.detach()),
            "chosen_logp": d(pc),
            "rejected_logp": d(pr),
            "rewards/chosen": self.beta * d(rc),
            "rewards/rejected": self.beta * d(rr),
            "rewards/margin": self.beta * d(rc - rr),
            "rewards/accuracy": float((rc > rr).float().mean()),
        })
        return loss, metrics
