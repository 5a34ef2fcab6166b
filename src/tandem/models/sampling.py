"""The one place that samples from a causal LM: token-id prompts in, new token ids out.

Conventions of :func:`sample_ids` (shared by evaluation's text generation and PPO rollouts):

* prompts are **left**-padded (:func:`left_pad`) into batches of ``batch_size`` (the attention mask hides the
  padding and transformers derives position ids from it), so every prompt ends right before its first new token;
* ``temperature == 0`` means greedy decoding; otherwise nucleus sampling with ``temperature`` and ``top_p``
  (no top-k cut);
* generation stops at EOS (:func:`eos_ids`: the tokenizer's ``eos_token_id`` plus any EOS ids of the model's
  generation config) or after ``max_new_tokens``; a result is the new tokens **up to and including** the first
  EOS (all of them when no EOS came);
* sampling is seeded once with ``seed`` inside :func:`torch.random.fork_rng`, so the caller's RNG state is left
  untouched and the same call returns the same ids; the model's train/eval mode is restored afterwards.
"""

from __future__ import annotations

import torch

__all__ = ["eos_ids", "left_pad", "sample_ids", "strip_eos"]


def eos_ids(model, tokenizer) -> list[int]:
    """EOS ids of the tokenizer and of the model's generation config (deduplicated, tokenizer's first)."""
    ids: list[int] = []
    config = model.generation_config if model.can_generate() else None
    for src in (tokenizer.eos_token_id, config.eos_token_id if config is not None else None):
        if src is None:
            continue
        for i in src if isinstance(src, (list, tuple)) else [src]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation config defines an EOS token id")
    return ids


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of shape ``[len(seqs), longest]``, each sequence flush right."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


def strip_eos(ids: list[int], eos: list[int]) -> list[int]:
    """``ids`` without a final EOS token."""
    return ids[:-1] if ids and ids[-1] in eos else ids


def _cut_after_eos(row: list[int], eos: set[int]) -> list[int]:
    return row[: next((j + 1 for j, t in enumerate(row) if t in eos), len(row))]


@torch.no_grad()
def sample_ids(model, prompts: list[list[int]], *, pad_id: int, eos: list[int], temperature: float, top_p: float,
               max_new_tokens: int, seed: int, batch_size: int | None = None, use_cache: bool = True,
               advance=None) -> list[list[int]]:
    """One continuation per prompt (new token ids, ending with the first EOS when one came); see the module
    docstring. ``batch_size=None`` samples all prompts in one batch."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("sample: every prompt needs at least one token")
    if not prompts:
        return []
    step = batch_size or len(prompts)
    kw = dict(max_new_tokens=max_new_tokens, eos_token_id=list(eos), pad_token_id=pad_id, use_cache=use_cache)
    if temperature == 0:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kw.update(do_sample=True, temperature=float(temperature), top_p=float(top_p), top_k=None)
    device = next(model.parameters()).device
    eos_set = set(eos)
    out: list[list[int]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, len(prompts), step):
                ids, mask = left_pad(prompts[start:start + step], pad_id)
                gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kw)
                out += [_cut_after_eos(row, eos_set) for row in gen[:, ids.shape[1]:].tolist()]
                if advance is not None:  # progress: ``advance(n)`` after each batch of n prompts
                    advance(len(prompts[start:start + step]))
    finally:
        model.train(was_training)
    return out
