"""Tiny models and hand-built batches (following the batch contract of docs/architecture.md) for the tests of
tandem.objectives. Kept independent of tandem.data.collate on purpose."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

IGNORE = -100
PAD = 0


def tiny_config(**kw) -> LlamaConfig:
    return LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       pad_token_id=PAD, tie_word_embeddings=False, **kw)


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config())


def tiny_reward_model(seed: int = 0) -> LlamaForSequenceClassification:
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(tiny_config(num_labels=1))


def make_batch(seqs: list[tuple[list[int], list[int]]], mode: str = "pack", rows: list[list[int]] | None = None,
               refs: dict[str, list[float]] | None = None) -> dict:
    """Batch dict of the given ``(input_ids, labels)`` sequences (seq id = index in ``seqs``).

    ``pack``: sequences back to back in ``rows`` (default: all in one row), rows right-padded to the longest
    with a padding block whose positions restart at 0; no attention mask. ``pad``: one sequence per row,
    right-padded, with ``attention_mask``.
    """
    if mode == "pad":
        rows = [[i] for i in range(len(seqs))]
    rows = rows or [list(range(len(seqs)))]
    width = max(sum(len(seqs[i][0]) for i in row) for row in rows)
    out = {k: [] for k in ("input_ids", "labels", "position_ids", "seq_ids", "attention_mask")}
    for row in rows:
        ids, lab, pos, sid = [], [], [], []
        for i in row:
            x, y = seqs[i]
            ids += x
            lab += y
            pos += list(range(len(x)))
            sid += [i] * len(x)
        n = len(ids)
        pad = width - n
        out["input_ids"].append(ids + [PAD] * pad)
        out["labels"].append(lab + [IGNORE] * pad)
        out["position_ids"].append(pos + list(range(pad)))
        out["seq_ids"].append(sid + [-1] * pad)
        out["attention_mask"].append([1] * n + [0] * pad)
    batch = {k: torch.tensor(v) for k, v in out.items()}
    if mode != "pad":
        del batch["attention_mask"]
    for k, v in (refs or {}).items():
        batch[k] = torch.tensor(v, dtype=torch.float32)
    return batch


def preference_batch_fn(mode: str = "pack"):
    """``batch_fn(features)`` for preference features: chosen sequences 0..B-1, rejected B..2B-1."""

    def batch_fn(features: list[dict]) -> dict:
        seqs = [(f["chosen_input_ids"], f["chosen_labels"]) for f in features]
        seqs += [(f["rejected_input_ids"], f["rejected_labels"]) for f in features]
        keys = sorted({k for f in features for k in f if k.startswith("ref_")})
        refs = {k: [f[k] for f in features] for k in keys}
        return make_batch(seqs, mode, refs=refs)

    return batch_fn


def pref_feature(prompt: list[int], chosen: list[int], rejected: list[int]) -> dict:
    """Preference feature with labels on the response tokens only."""
    return {
        "chosen_input_ids": prompt + chosen,
        "chosen_labels": [IGNORE] * len(prompt) + chosen,
        "rejected_input_ids": prompt + rejected,
        "rejected_labels": [IGNORE] * len(prompt) + rejected,
    }


def direct_logp(model, ids: list[int], labels: list[int]) -> tuple[float, int]:
    """Summed log-prob of the labelled tokens of one unpadded sequence from the model's full logits."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()
    lp = torch.log_softmax(logits[:-1], dim=-1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    mask = torch.tensor(labels[1:]) != IGNORE
    return float(lp[mask].sum()), int(mask.sum())
