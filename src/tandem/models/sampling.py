"""The one place that samples from a causal LM: token-id prompts in, new token ids out.

Conventions of :func:`sample_ids` (shared by evaluation's text generation and PPO rollouts):

* prompts are **left**-padded (:func:`left_pad`) into batches of ``batch_size`` (the attention mask hides the
  padding; position ids count the real tokens, as ``model.generate`` derives them), so every prompt ends right before
  its first new token. Batches are consecutive prompts in the caller's order: in bf16 the batch's composition (its
  padding) changes some greedy replies, so the batches stay those ``model.generate`` was called with before
  (length-sorted batches of 8 changed 22 of 64 bf16 SmolLM2 replies: docs/benchmarks.md);
* ``temperature == 0`` means greedy decoding; otherwise nucleus sampling with ``temperature`` and ``top_p``
  (no top-k cut), computed on fp32 logits as ``model.generate`` does;
* generation stops at EOS (:func:`eos_ids`: the tokenizer's ``eos_token_id`` plus any EOS ids of the model's
  generation config) or after ``max_new_tokens``; a result is the new tokens **up to and including** the first
  EOS (all of them when no EOS came);
* sampling is seeded once with ``seed`` inside :func:`torch.random.fork_rng`, so the caller's RNG state is left
  untouched and the same call returns the same ids; the model's train/eval mode is restored afterwards.

How it decodes (:func:`tandem.models.decode.decode`, measured in docs/benchmarks.md, "Generation"): its own loop over
the model's forward instead of ``model.generate``, with a KV cache preallocated for the whole batch that is written in
place (no per-step concatenation), logits only for the last position, and rows that reached EOS dropped from the
batch (with their cache rows) instead of decoding padding until the longest reply ends; on a CPU with bf16 weights the
linear layers compute with weights packed once per call (:mod:`tandem.models.packed`). Greedy decoding gives the
same tokens as ``model.generate`` (tests/test_generation_speed.py, and ``benchmarks/generation.py`` on SmolLM2).
"""

from __future__ import annotations

import torch

from tandem.models.decode import decode
from tandem.models.packed import packed_linears

__all__ = ["eos_ids", "left_pad", "sample_ids", "strip_eos"]


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, else its EOS id (decoder-only tokenizers often have no pad token)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


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


@torch.no_grad()
def sample_ids(model, prompts: list[list[int]], *, pad_id: int, eos: list[int], temperature: float, top_p: float,
               max_new_tokens: int, seed: int, batch_size: int | None = None, use_cache: bool = True,
               advance=None) -> list[list[int]]:
    """One continuation per prompt (new token ids, ending with the first EOS when one came); see the module
    docstring. ``batch_size=None`` samples all prompts in one batch; ``use_cache=False`` recomputes the whole
    sequence at every step (a baseline for benchmarks)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("sample: every prompt needs at least one token")
    if not prompts:
        return []
    step = batch_size or len(prompts)
    device = next(model.parameters()).device
    out: list[list[int]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), packed_linears(model):
            torch.manual_seed(seed)
            for start in range(0, len(prompts), step):
                ids, mask = left_pad(prompts[start:start + step], pad_id)
                out += decode(model, ids.to(device), mask.to(device), max_new_tokens=max_new_tokens, eos=eos,
                              pad_id=pad_id, temperature=temperature, top_p=top_p, use_cache=use_cache)
                if advance is not None:  # progress: ``advance(n)`` after each batch of n prompts
                    advance(len(prompts[start:start + step]))
    finally:
        model.train(was_training)
    return out
