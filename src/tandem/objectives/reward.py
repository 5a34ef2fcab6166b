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

from tandem.objectives.logprobs import body_inputs


def _unwrap(model):
    """The transformers model under a peft wrapper (``peft_model.base_model`` would be the LoRA wrapper)."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def sequence_rewards(model, batch: dict, num_seqs: int) -> torch.Tensor:
    """``[S]`` float32 rewards: ``model.score`` at the last token of each sequence (packed or padded batch).

    The backbone ``model.base_model`` is called as the log-prob path calls a decoder body
    (:func:`tandem.objectives.logprobs.body_inputs`: positions, and the attention mask of pad mode or of prefix sharing,
    where each reply's last token sees exactly its own sequence), then the hidden states at the last position of every
    sequence id ``0..num_seqs-1`` are gathered and scored.
    """
    base = _unwrap(model)
    try:
        score = base.score
    except AttributeError:
        raise TypeError(f"reward model {type(base).__name__} has no `score` head; load it with "
                        "AutoModelForSequenceClassification(num_labels=1)") from None
    hidden = base.base_model(**body_inputs(base, batch)).last_hidden_state  # [R, T, H]
    seq = batch["seq_ids"].reshape(-1)
    pos = torch.arange(seq.numel(), device=seq.device)
    valid = seq >= 0
    last = torch.full((num_seqs,), -1, dtype=torch.long, device=seq.device)
    last = last.scatter_reduce(0, seq[valid], pos[valid], reduce="amax")
    if bool((last < 0).any()):
        missing = torch.nonzero(last < 0).flatten().tolist()
        raise ValueError(f"sequence_rewards: batch has no token for seq id(s) {missing} (num_seqs={num_seqs})")
    h = hidden.reshape(seq.numel(), -1)[last]  # [S, H]
    # the head may be kept in another dtype than the body (a trainable fp32 head on a bf16 base): match the head
    head = [p for p in score.parameters() if p.requires_grad] or list(score.parameters())
    return score(h.to(head[0].dtype)).squeeze(-1).float()


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
