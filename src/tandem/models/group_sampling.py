"""Group sampling for GRPO / RLOO rollouts: ``n`` continuations of each prompt that share the prompt's prefill.

:func:`sample_groups` follows the conventions of :mod:`tandem.models.sampling` (left padding, ``temperature == 0``
is greedy, nucleus sampling with ``top_p`` and no top-k cut, a result is the new tokens up to and including the first
EOS, seeded, the model's train/eval mode restored), and differs in how it gets there:

* **one prefill per prompt**: the ``P`` distinct prompts are left-padded into one batch and run once; the KV cache
  and the last logits are then repeated ``n`` times along the batch (``DynamicCache.batch_repeat_interleave``), so
  the group of a prompt shares its prefill (``model.generate`` with ``num_return_sequences`` runs the prompt
  ``n`` times);
* **per-row EOS stop**: a row that emitted EOS leaves the batch (``batch_select_indices`` on the cache), so later
  decoding steps compute only the rows still generating;
* each prompt's draws come from its own ``torch.Generator`` (``seed``: one per prompt, or one int for the call from
  which each prompt's is derived; the global RNG is not touched), so the same call returns the same ids and a prompt's
  group does not depend on the other prompts of the batch: split over processes (DDP), each prompt keeps its seed and
  its completions (the GRPO loop seeds a prompt by its place in the global batch).

Results are prompt-major: prompt 0's ``n`` continuations, then prompt 1's, ...

The sampler seam: the GRPO loop calls one function ``(model, prompts, n, ...) -> token ids``; a vLLM-style engine
(weights synchronised after each optimizer step) would be another function of this signature (docs/distributed.md).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

from tandem.models.sampling import left_pad

__all__ = ["sample_groups", "pick_tokens", "prompt_seeds"]


def pick_tokens(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """``[R]`` next tokens from ``[R, V]`` logits: argmax at ``temperature == 0``, else a draw from
    ``softmax(logits / temperature)`` restricted to the nucleus ``top_p`` (transformers' ``TopPLogitsWarper`` rule:
    the smallest tokens whose cumulative probability is at most ``1 - top_p`` are removed, the top one always kept)."""
    if temperature == 0:
        return logits.argmax(-1)
    z = logits.float() / temperature
    if top_p < 1.0:
        sorted_z, order = torch.sort(z, descending=False)
        cum = sorted_z.softmax(-1).cumsum(-1)
        drop = cum <= (1 - top_p)
        drop[:, -1] = False
        z = z.scatter(1, order, sorted_z.masked_fill(drop, float("-inf")))
    return torch.multinomial(z.softmax(-1), 1, generator=generator).squeeze(1)


@torch.no_grad()
def sample_groups(model, prompts: list[list[int]], *, n: int, pad_id: int, eos: list[int], temperature: float,
                  top_p: float, max_new_tokens: int, seed: int | Sequence[int]) -> list[list[int]]:
    """``n`` continuations per prompt (``len(prompts) * n`` lists, prompt-major), see the module docstring."""
    if n < 1 or max_new_tokens < 1:
        raise ValueError(f"sample_groups: n ({n}) and max_new_tokens ({max_new_tokens}) must be at least 1")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("sample_groups: every prompt needs at least one token")
    seeds = prompt_seeds(seed, len(prompts))
    device = next(model.parameters()).device
    ids, mask = (t.to(device) for t in left_pad(prompts, pad_id))
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    eos_t = torch.tensor(sorted(set(eos)), device=device)
    R = len(prompts) * n
    out = torch.full((R, max_new_tokens), pad_id, dtype=torch.long, device=device)
    lengths = torch.zeros(R, dtype=torch.long, device=device)
    key = _cache_key(model)
    was_training = model.training
    model.eval()
    try:
        res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        cache = res[key]
        cache.batch_repeat_interleave(n)
        logits = res.logits[:, -1].float().repeat_interleave(n, 0)
        mask, last = mask.repeat_interleave(n, 0), pos[:, -1].repeat_interleave(n)
        alive = torch.arange(R, device=device)  # the full-batch row of each row still generating
        for t in range(max_new_tokens):
            tok = _pick_per_prompt(logits, alive // n, temperature, top_p, gens)
            out[alive, t] = tok
            lengths[alive] += 1
            going = ~torch.isin(tok, eos_t)
            if t == max_new_tokens - 1 or not bool(going.any()):
                break
            if not bool(going.all()):  # rows that ended leave the batch (and the cache)
                keep = going.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                alive, mask, last, tok = alive[keep], mask[keep], last[keep], tok[keep]
            mask = torch.cat([mask, mask.new_ones(len(alive), 1)], 1)
            last = last + 1
            res = model(input_ids=tok[:, None], attention_mask=mask, position_ids=last[:, None], use_cache=True,
                        **{key: cache})
            logits = res.logits[:, -1].float()
    finally:
        model.train(was_training)
    return [row[:k] for row, k in zip(out.tolist(), lengths.tolist())]


def prompt_seeds(seed: int | Sequence[int], count: int) -> list[int]:
    """One generator seed per prompt: ``seed`` itself when it is a sequence (its length must be ``count``), else
    derived from the int (prompt ``i``: ``seed * 1_000_003 + i``, modulo 2**63)."""
    if isinstance(seed, int):
        return [(seed * 1_000_003 + i) % 2**63 for i in range(count)]
    seeds = [int(s) % 2**63 for s in seed]
    if len(seeds) != count:
        raise ValueError(f"sample_groups: {len(seeds)} seeds for {count} prompts")
    return seeds


def _pick_per_prompt(logits: torch.Tensor, owner: torch.Tensor, temperature: float, top_p: float,
                     gens: list[torch.Generator]) -> torch.Tensor:
    """:func:`pick_tokens` with each prompt's rows (``owner``: the prompt of each row) drawn from its generator."""
    if temperature == 0:
        return logits.argmax(-1)
    tok = torch.empty(len(owner), dtype=torch.long, device=logits.device)
    for p in owner.unique().tolist():
        rows = (owner == p).nonzero().squeeze(1)
        tok[rows] = pick_tokens(logits[rows], temperature, top_p, gens[p])
    return tok


def _cache_key(model) -> str:
    """The name of the KV-cache argument and output of the model's ``forward``: ``cache`` (recent transformers) or
    ``past_key_values`` (earlier 5.x releases)."""
    from peft import PeftModel

    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"
