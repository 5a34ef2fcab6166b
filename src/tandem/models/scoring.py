"""How tandem calls a decoder body on one of its batches, and the reward a sequence-classification model gives each
sequence of a batch. Below the objectives and the reward functions, which both score with them.

See docs/architecture.md for the batch contract (packed or padded rows, ``position_ids``, ``seq_ids``, and the 4D
boolean mask of prefix sharing).
"""

from __future__ import annotations

import torch


def body_inputs(model, batch: dict) -> dict:
    """Keyword arguments of a decoder body for ``batch``: ids, positions, no cache, and the batch's ``attention_mask``
    when it has one (pad mode). A 4D boolean mask (prefix sharing, see :mod:`tandem.data.prefix`) is passed as an
    additive mask in ``model``'s compute dtype, which transformers hands as-is to sdpa and eager attention."""
    kwargs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    if "attention_mask" in batch:
        mask = batch["attention_mask"]
        kwargs["attention_mask"] = additive_mask(mask, compute_dtype(model)) if mask.dim() == 4 else mask
    return kwargs


def compute_dtype(model) -> torch.dtype:
    """The dtype attention runs in: the autocast dtype when autocast is on, else the input embeddings' dtype."""
    weight = model.get_input_embeddings().weight
    dev = weight.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else weight.dtype


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``0`` where ``mask`` is True (attend), the dtype's lowest value elsewhere."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)


def _unwrap(model):
    """The transformers model under a peft wrapper (``peft_model.base_model`` would be the LoRA wrapper)."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def sequence_rewards(model, batch: dict, num_seqs: int) -> torch.Tensor:
    """``[S]`` float32 rewards: ``model.score`` at the last token of each sequence (packed or padded batch).

    The backbone ``model.base_model`` is called as the log-prob path calls a decoder body
    (:func:`body_inputs`: positions, and the attention mask of pad mode or of prefix sharing,
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
