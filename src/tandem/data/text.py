"""Plain text as language-modelling features (the pretraining-like corpus of ``rlhf+pt`` / ``ppo+pt``)."""

from __future__ import annotations

IGNORE = -100


def encode_texts(tokenizer, texts: list[str], max_length: int) -> list[dict]:
    """``{"input_ids", "labels"}`` per non-empty text: BOS (when the tokenizer has one) + tokens, cut at
    ``max_length``, loss on every token after the first."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    out = []
    for t in texts:
        ids = (bos + tokenizer(t, add_special_tokens=False)["input_ids"])[:max_length]
        if len(ids) >= 2:
            out.append({"input_ids": ids, "labels": [IGNORE] + ids[1:]})
    return out
