"""Reward model: Bradley-Terry ranking loss on (chosen, rejected).

loss = mean over pairs of -log sigmoid(r_c - r_r)  [+ center_coef * mean((r_c + r_r)^2)]

The reward of a sequence is the scalar head applied to the hidden state of its last token (the EOS that
ends the response), which is what ``AutoModelForSequenceClassification`` scores for an unpadded sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequence_rewards(model, batch: dict, num_seqs: int) -> torch.Tensor:
    """``[S]`` rewards: the score head at the last token of each sequence (packed or padded batches)."""
    body = getattr(model, model.base_model_prefix)
    kwargs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    if "attention_mask" in batch:
        kwargs["attention_mask"] = batch["attention_mask"]
    hidden = body(**kwargs).last_hidden_state  # [R, T, H]
    seq = batch["seq_ids"]
    R, T = seq.shape
    flat_seq = seq.reshape(-1)
    pos = torch.arange(R * T, device=seq.device)
    valid = flat_seq >= 0
    last = torch.full((num_seqs,), -1, dtype=torch.long, device=seq.device)
    last = last.scatter_reduce(0, flat_seq[valid], pos[valid], reduce="amax")
    h = hidden.reshape(R * T, -1)[last]
    return model.score(h).squeeze(-1).float()


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, center_coef: float = 0.0) -> torch.Tensor:
    loss = -F.logsigmoid(r_chosen - r_rejected).mean()
    if center_coef:
        loss = loss + center_coef * ((r_chosen + r_rejected) ** 2).mean()
    return loss


class Reward:
    data_kind = "preference"
    unit = "examples"

    def __init__(self, center_coef: float = 0.0):
        self.center_coef = center_coef

    def prepare(self, model, features, batch_fn):
        return features

    def __call__(self, model, batch):
        n = int(batch["seq_ids"].max()) + 1
        r = sequence_rewards(model, batch, n)
        b = n // 2
        rc, rr = r[:b], r[b:]
        loss = bradley_terry_loss(rc, rr, self.center_coef)
        return loss, {
            "loss": float(loss.detach()),
            "accuracy": float((rc > rr).float().mean()),
            "margin": float((rc - rr).mean().detach()),
            "reward_chosen": float(rc.mean().detach()),
            "reward_rejected": float(rr.mean().detach()),
        }
