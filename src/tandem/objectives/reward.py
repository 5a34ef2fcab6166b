"""Reward model: Bradley-Terry ranking loss on (chosen, rejected) pairs.

    loss = mean over pairs of -log sigmoid(r_c - r_r - m)   [+ center_coef * mean((r_c + r_r)^2)]

``m`` is the pair's ``margin`` when the data has that column (Llama 2's margin loss, Touvron et al. 2023, as TRL's
RewardTrainer applies it: a pair rated far apart must be separated by more), else 0. The optional centering term (off by default, ``center_coef = 0``) keeps rewards near zero, since the
Bradley-Terry loss only sees differences. Metrics: ``loss``, ``accuracy`` (fraction of pairs with
r_c > r_r), ``margin`` (mean r_c - r_r), ``reward_chosen`` / ``reward_rejected`` (means).

The reward model is an ``AutoModelForSequenceClassification(num_labels=1)``. The reward of a sequence is its
``score`` head applied to the final hidden state of the sequence's last token (the last position carrying its
seq id), which is what the HF model itself returns for an unpadded sequence. The whole sequence is scored:
labels are not used, only ``seq_ids``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tandem.models.scoring import sequence_rewards  # noqa: F401 (re-exported)


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, center_coef: float = 0.0,
                       margin: torch.Tensor | None = None) -> torch.Tensor:
    """``mean(-logsigmoid(r_c - r_r - margin)) + center_coef * mean((r_c + r_r)^2)`` (``margin`` None: 0)."""
    diff = r_chosen - r_rejected
    loss = -F.logsigmoid(diff if margin is None else diff - margin.to(diff)).mean()
    if center_coef:
        loss = loss + center_coef * ((r_chosen + r_rejected) ** 2).mean()
    return loss


class Reward:
    """Bradley-Terry reward-model training on preference batches (see the module docstring)."""

    data_kind = "preference"
    unit = "examples"

    def __init__(self, center_coef: float = 0.0):
        if center_coef < 0:
            raise ValueError(f"reward center_coef must be >= 0, got {center_coef}")
        self.center_coef = center_coef

    def prepare(self, model, features, batch_fn):
        return features

    def __call__(self, model, batch):
        n = int(batch["seq_ids"].max()) + 1
        if n % 2:
            raise ValueError(f"reward batch has {n} sequences; a preference batch has 2B (chosen then rejected)")
        r = sequence_rewards(model, batch, n)
        b = n // 2
        rc, rr = r[:b], r[b:]
        loss = bradley_terry_loss(rc, rr, self.center_coef, batch.get("margin"))
        return loss, {
            "loss": float(loss.detach()),
            "accuracy": float((rc > rr).float().mean()),
            "margin": float((rc - rr).mean().detach()),
            "reward_chosen": float(rc.mean().detach()),
            "reward_rejected": float(rr.mean().detach()),
        }
