"""Per-sequence log-probabilities from a (packed or padded) batch.

See docs/architecture.md for the batch contract. Labels are unshifted: ``labels[r, t]`` is the id of the
token at position ``t``, predicted from the hidden state at ``t - 1``. Logits are computed only where a label
exists, so the ``[rows, length, vocab]`` tensor is never built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def forward_hidden(model, batch: dict) -> torch.Tensor:
    """Last hidden states ``[R, T, H]`` of the decoder body (``model.get_decoder()``, no LM head) of a causal LM,
    plain or peft-wrapped."""
    body = model.get_decoder()
    kwargs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    if "attention_mask" in batch:
        kwargs["attention_mask"] = batch["attention_mask"]
    return body(**kwargs).last_hidden_state


_forward_hidden = forward_hidden  # older private name, still imported by the PPO rollout code


def token_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of every labelled token and the sequence each belongs to.

    Returns ``(logps[N], seq_index[N])`` over the N labelled positions of the batch, in row-major order.
    """
    hidden = forward_hidden(model, batch)
    labels = batch["labels"]
    target = labels[:, 1:]
    mask = target != IGNORE
    h = hidden[:, :-1][mask]  # [N, H]: hidden state that predicts each labelled token
    logits = model.get_output_embeddings()(h).float()
    tgt = target[mask]
    logps = -F.cross_entropy(logits, tgt, reduction="none")
    seq = batch["seq_ids"][:, 1:][mask]
    return logps, seq


def sequence_logps(model, batch: dict, num_seqs: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of labelled tokens per sequence, and the number of labelled tokens per sequence.

    Returns ``(logp_sum[S], n_tokens[S])``.
    """
    logps, seq = token_logps(model, batch)
    if num_seqs is None:
        num_seqs = int(batch["seq_ids"].max().item()) + 1
    out = torch.zeros(num_seqs, dtype=logps.dtype, device=logps.device).index_add(0, seq, logps)
    count = torch.zeros(num_seqs, dtype=logps.dtype, device=logps.device).index_add(0, seq, torch.ones_like(logps))
    return out, count


def pair_logps(model, batch: dict, num_pairs: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(logp_sum[2B], n_tokens[2B], B)`` of a preference batch: chosen sequences ``0..B-1``, rejected
    ``B..2B-1``. ``B`` is read from the batch's sequence ids unless given."""
    if num_pairs is None:
        n = int(batch["seq_ids"].max()) + 1
        if n % 2:
            raise ValueError(f"preference batch has {n} sequences; it must have 2B (chosen then rejected)")
        num_pairs = n // 2
    s, count = sequence_logps(model, batch, num_seqs=2 * num_pairs)
    return s, count, num_pairs
