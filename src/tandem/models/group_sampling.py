"""Group sampling for GRPO / RLOO rollouts: ``n`` continuations of each prompt that share the prompt's prefill.

:func:`sample_groups` follows the conventions of :mod:`tandem.models.sampling` (left padding, ``temperature == 0``
is greedy, nucleus sampling with ``top_p`` and no top-k cut, a result is the new tokens up to and including the first
EOS, the model's train/eval mode restored) and decodes with the same loop (:func:`tandem.models.decode.decode`: slab
KV cache, finished rows leave the batch), with three differences:

* **one prefill per prompt**: the ``P`` distinct prompts are left-padded into one batch and run once; the KV cache
  and the last logits are then repeated ``n`` times along the batch (``model.generate`` with ``num_return_sequences``
  runs the prompt ``n`` times);
* each prompt's draws come from its own ``torch.Generator`` (``seed``: one per prompt, or one int for the call from
  which each prompt's is derived; the global RNG is not touched), so the same call returns the same ids and a prompt's
  group does not depend on the other prompts of the batch: split over processes (DDP), each prompt keeps its seed and
  its completions (the GRPO loop seeds a prompt by its place in the global batch);
* tokens are drawn by inverse CDF (one uniform per row, :func:`tandem.models.decode.inverse_cdf`): the same
  distribution as ``torch.multinomial``, whose exponential variate per vocabulary entry was a fifth of the decode step
  on a CPU (docs/benchmarks.md, "GRPO step").

Results are prompt-major: prompt 0's ``n`` continuations, then prompt 1's, ...

The sampler seam: the GRPO loop calls one function ``(model, prompts, n, ...) -> token ids``; a vLLM-style engine
(weights synchronised after each optimizer step) would be another function of this signature (docs/distributed.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tandem.models.decode import decode, pick_next
from tandem.models.packed import packed_linears
from tandem.models.sampling import left_pad

__all__ = ["sample_groups", "prompt_seeds"]


def prompt_seeds(seed: int | Sequence[int], count: int) -> list[int]:
    """One generator seed per prompt: ``seed`` itself when it is a sequence (its length must be ``count``), else
    derived from the int (prompt ``i``: ``seed * 1_000_003 + i``, modulo 2**63)."""
    if isinstance(seed, int):
        return [(seed * 1_000_003 + i) % 2**63 for i in range(count)]
    seeds = [int(s) % 2**63 for s in seed]
    if len(seeds) != count:
        raise ValueError(f"sample_groups: {len(seeds)} seeds for {count} prompts")
    return seeds


@torch.no_grad()
def sample_groups(model, prompts: list[list[int]], *, n: int, pad_id: int, eos: list[int], temperature: float,
                  top_p: float, max_new_tokens: int, seed: int | Sequence[int]) -> list[list[int]]:
    """``n`` continuations per prompt (``len(prompts) * n`` lists, prompt-major), see the module docstring."""
    if n < 1 or max_new_tokens < 1:
        raise ValueError(f"sample_groups: n ({n}) and max_new_tokens ({max_new_tokens}) must be at least 1")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("sample_groups: every prompt needs at least one token")
    device = next(model.parameters()).device
    gens = [torch.Generator(device=device).manual_seed(s) for s in prompt_seeds(seed, len(prompts))]

    def pick(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:  # each prompt's rows from its generator
        owner, tok = rows // n, torch.empty(len(rows), dtype=torch.long, device=device)
        for p in owner.unique().tolist():
            mine = (owner == p).nonzero().squeeze(1)
            tok[mine] = pick_next(logits[mine], temperature, top_p, gens[p], draw="inverse_cdf")
        return tok

    ids, mask = (t.to(device) for t in left_pad(prompts, pad_id))
    was_training = model.training
    model.eval()
    try:
        with packed_linears(model):
            return decode(model, ids, mask, max_new_tokens=max_new_tokens, eos=eos, pad_id=pad_id,
                          temperature=temperature, top_p=top_p, repeat=n, pick=pick if temperature > 0 else None)
    finally:
        model.train(was_training)
