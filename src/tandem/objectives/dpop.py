"""DPO-Positive, DPOP (Pal et al. 2024, "Smaug", arXiv 2402.13228): DPO plus a penalty whenever the chosen
response's log-prob falls below the reference's.

For each pair, with ``logp`` the summed response log-prob under the policy and ``ref`` under the reference (the
model at the start of the stage, from the same one-off pass as DPO: :meth:`DPO.prepare`):

    h    = (logp_w - ref_w) - (logp_l - ref_l)                 (DPO's log-ratio margin)
    drop = max(0, ref_w - logp_w)                             (how far the chosen log-prob fell)
    L    = -log sigmoid(beta * (h - lambda * drop))

averaged over pairs. While the chosen log-prob stays at or above the reference, this is DPO; once it falls, the
margin is reduced by ``lambda`` times the fall, so the gradient pushes ``logp_w`` up with weight
``beta (1 + lambda) sigmoid(...)`` instead of ``beta sigmoid(...)``: a remedy for the failure mode where DPO lowers
both log-probs (see the gradient-entanglement section of docs/methods.md).

Defaults: ``beta = 0.1`` (tandem's DPO default, so ``dpo`` and ``dpop`` compare like for like; the paper uses
0.3 in several of its experiments) and ``lam = 50`` (the paper's lambda).

Metrics: as DPO (``chosen_logp``, ``rejected_logp``, ``rewards/chosen``, ``rewards/rejected``,
``rewards/margin = beta h``, ``rewards/accuracy``) plus ``dpop/chosen_drop`` (mean ``drop``) and
``dpop/frac_below_ref`` (fraction of pairs with ``drop > 0``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tandem.objectives.dpo import DPO, REF_KEYS, logratio_margin
from tandem.objectives.logprobs import pair_logps


def dpop_loss(h: torch.Tensor, chosen_drop: torch.Tensor, beta: float, lam: float) -> torch.Tensor:
    """Per-pair ``-log sigmoid(beta * (h - lam * chosen_drop))``; take ``.mean()``."""
    return -F.logsigmoid(beta * (h - lam * chosen_drop))


class DPOP:
    """DPO-Positive on preference batches (see the module docstring)."""

    data_kind = "preference"
    unit = "examples"

    def __init__(self, beta: float = 0.1, lam: float = 50.0):
        if not lam >= 0:
            raise ValueError(f"dpop lam must be >= 0, got {lam}")
        self.reference = DPO(beta=beta)  # validates beta; its prepare is the reference pass (summed log-probs)
        self.beta, self.lam = float(beta), float(lam)

    def prepare(self, model, features, batch_fn):
        """Features with ``ref_chosen_logp`` / ``ref_rejected_logp`` (DPO's one no-grad pass)."""
        return self.reference.prepare(model, features, batch_fn)

    def __call__(self, model, batch):
        if not all(k in batch for k in REF_KEYS):
            raise KeyError("dpop batch has no ref_chosen_logp / ref_rejected_logp: run prepare on the features "
                           "first (the engine does this at the start of each stage)")
        b = int(batch["ref_chosen_logp"].shape[0])
        s, _, _ = pair_logps(model, batch, num_pairs=b)
        pc, pr = s[:b], s[b:]
        ref_c, ref_r = batch["ref_chosen_logp"].to(pc), batch["ref_rejected_logp"].to(pr)
        h = logratio_margin(pc, pr, ref_c, ref_r)
        drop = torch.relu(ref_c - pc)
        loss = dpop_loss(h, drop, self.beta, self.lam).mean()
        d = lambda x: float(x.detach().float().mean())  # noqa: E731
        return loss, {
            "loss": float(loss.detach()),
            "chosen_logp": d(pc),
            "rejected_logp": d(pr),
            "rewards/chosen": self.beta * d(pc - ref_c),
            "rewards/rejected": self.beta * d(pr - ref_r),
            "rewards/margin": self.beta * d(h),
            "rewards/accuracy": float((h > 0).float().mean()),
            "dpop/chosen_drop": d(drop),
            "dpop/frac_below_ref": float((drop > 0).float().mean()),
        }
