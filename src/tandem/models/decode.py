"""Batched autoregressive decoding over a causal LM's forward: the engine under :func:`tandem.models.sampling.sample_ids`.

One batch of left-padded prompts in, the new tokens of every row out (up to and including its first EOS). What it
does instead of ``model.generate`` (each measured on SmolLM2 in docs/benchmarks.md, "Generation"):

* **a slab KV cache** (:class:`SlabLayer`): every layer's keys and values live in one buffer allocated for the prompt
  plus ``max_new_tokens`` positions and are written in place; attention reads a view of the filled part. transformers'
  default ``DynamicCache`` concatenates (copies) the whole cache of every layer at every step, which on a CPU costs
  more than the step's matmuls at batch 32-64; its ``StaticCache`` attends over all preallocated positions at every step;
* **finished rows leave the batch**: once an eighth of the rows reached EOS, they are dropped together with their cache
  rows (``model.generate`` keeps decoding them as padding until the longest reply ends). The left-padding columns
  stay even when no remaining row needs them: dropping them changes the attention's key length, and in bf16 that
  changed 4 of 64 SmolLM2 greedy replies;
* **one prefill per prompt** when a prompt has several continuations (``repeat``: GRPO groups): its cache rows are
  repeated, not recomputed;
* **logits of the last position only**, and the token choice on fp32 logits exactly as ``model.generate`` makes it
  (``argmax``; or temperature, then the top-p cut of transformers' ``TopPLogitsWarper``, then ``multinomial``; the
  GRPO rollouts draw the same distribution by inverse CDF instead, :func:`pick_next`).

Position ids are those ``model.generate`` derives from the attention mask (``cumsum - 1``, 0 on padding), so greedy
decoding returns the same tokens as ``model.generate`` on the same batch.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
from transformers import LlamaForCausalLM
from transformers.cache_utils import Cache, DynamicLayer

__all__ = ["SlabLayer", "decode", "inverse_cdf", "pick_next"]

#: the forward's keyword for the KV cache (``cache`` since transformers renamed ``past_key_values``)
CACHE_KW = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"
#: drop finished rows once at least this share of the batch has finished (each drop copies the live cache once)
PRUNE_SHARE = 1 / 8


class SlabLayer(DynamicLayer):
    """One layer's keys and values in buffers preallocated for ``capacity`` positions, filled in place."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, _ = key_states.shape
        self.device = key_states.device
        self.kbuf = key_states.new_empty((b, h, self.capacity, key_states.shape[-1]))
        self.vbuf = value_states.new_empty((b, value_states.shape[1], self.capacity, value_states.shape[-1]))
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.kbuf.shape[2]:
            raise RuntimeError(f"slab KV cache full: {end} positions > capacity {self.kbuf.shape[2]}")
        self.kbuf[:, :, self.length:end] = key_states
        self.vbuf[:, :, self.length:end] = value_states
        self.length = end
        self.keys, self.values = self.kbuf[:, :, :end], self.vbuf[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def keep(self, rows: torch.Tensor, first: int) -> None:
        """Keep batch rows ``rows`` (in that order) and positions ``first..`` (in place, within the same buffers)."""
        if not self.is_initialized:
            return
        n, k = self.length - first, len(rows)
        self.kbuf[:k, :, :n] = self.kbuf[rows, :, first:self.length]  # the right side is a copy: no overlap issue
        self.vbuf[:k, :, :n] = self.vbuf[rows, :, first:self.length]
        self.kbuf, self.vbuf, self.length = self.kbuf[:k], self.vbuf[:k], n
        self.keys, self.values = self.kbuf[:, :, :n], self.vbuf[:, :, :n]

    def repeat(self, n: int) -> None:
        """Each batch row ``n`` times in a row (a prompt's prefill shared by its ``n`` continuations)."""
        if self.is_initialized and n > 1:
            self.kbuf, self.vbuf = self.kbuf.repeat_interleave(n, 0), self.vbuf.repeat_interleave(n, 0)
            self.keys, self.values = self.kbuf[:, :, :self.length], self.vbuf[:, :, :self.length]


def pick_next(logits: torch.Tensor, temperature: float, top_p: float,
              generator: torch.Generator | None = None, draw: str = "multinomial") -> torch.Tensor:
    """Next token per row from fp32 ``logits [B, V]``: argmax when ``temperature == 0``; else a draw (from
    ``generator``, else the global RNG) from ``softmax(logits / temperature)`` restricted to the top-p nucleus
    (transformers' ``TopPLogitsWarper``: drop the least likely tokens whose cumulative probability stays <= 1 - top_p,
    always keep the most likely one).

    ``draw``: ``"multinomial"`` is ``torch.multinomial``, the same random stream as ``model.generate``'s (an
    exponential variate per vocabulary entry: on a CPU with SmolLM2's 49,152 tokens, 27 ms a step at 16 rows, a fifth
    of the decode step); ``"inverse_cdf"`` draws the same distribution from one uniform per row (:func:`inverse_cdf`:
    a cumulative sum and a binary search per row), and is what the GRPO / RLOO rollouts use (their per-prompt
    streams are tandem's own anyway)."""
    if temperature == 0:
        return torch.argmax(logits, dim=-1)
    scores = logits / temperature
    if top_p < 1.0:
        sorted_scores, sorted_idx = torch.sort(scores, descending=False)
        drop = sorted_scores.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        drop[..., -1:] = False
        scores = scores.masked_fill(drop.scatter(1, sorted_idx, drop), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if draw == "inverse_cdf":
        return inverse_cdf(probs, generator)
    if draw != "multinomial":
        raise ValueError(f"pick_next: draw {draw!r} is not 'multinomial' or 'inverse_cdf'")
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


def inverse_cdf(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of ``probs [B, V]`` (rows of non-negative weights, each with a positive sum): the token ``i``
    with ``cdf[i-1] <= u < cdf[i]``, ``u`` uniform on ``[0, cdf[V-1])``; the cumulative sums are float64, so a token
    of probability 0 is never drawn (up to u's rounding onto the total, about 2**-53, where the last token is taken)."""
    cdf = probs.double().cumsum(-1)
    u = torch.rand((probs.shape[0], 1), dtype=torch.float64, generator=generator, device=probs.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=probs.shape[-1] - 1)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


@torch.no_grad()
def decode(model, ids: torch.Tensor, mask: torch.Tensor, *, max_new_tokens: int, eos: list[int], pad_id: int,
           temperature: float, top_p: float, use_cache: bool = True, repeat: int = 1,
           pick: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> list[list[int]]:
    """New tokens per row of the left-padded batch ``ids``/``mask`` (``[B, T]``), each cut after its first EOS.
    ``use_cache=False`` runs the whole sequence through the model at every step (no KV cache). ``repeat``: ``n``
    continuations per prompt (``B * n`` results, prompt-major) from one prefill per prompt, its cache rows repeated.
    ``pick(logits, rows)``: the next tokens of the batch's rows (``rows``: each one's result index), instead of
    :func:`pick_next` with the global RNG."""
    T, device = ids.shape[1], ids.device
    eos_t = torch.tensor(sorted(set(eos)), device=device)
    B = ids.shape[0] * repeat
    gen = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    lengths = torch.full((B,), max_new_tokens, dtype=torch.long, device=device)
    live = torch.arange(B, device=device)  # batch row -> original row
    done = torch.zeros(B, dtype=torch.bool, device=device)  # reached EOS (still in the batch until the next drop)
    cache = Cache(layers=[SlabLayer(T + max_new_tokens) for _ in range(model.config.num_hidden_layers)]) \
        if use_cache else None
    seq, pos = ids, _positions(mask)
    kw = {CACHE_KW: cache, "use_cache": use_cache, "logits_to_keep": 1}
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, **kw).logits[:, -1].float()
    if repeat > 1:  # one prefill per prompt, shared by its continuations
        logits, mask, pos, seq = (x.repeat_interleave(repeat, 0) for x in (logits, mask, pos, seq))
        for layer in cache.layers if use_cache else []:
            layer.repeat(repeat)
    for t in range(max_new_tokens):
        nxt = (pick_next(logits, temperature, top_p) if pick is None else pick(logits, live)).masked_fill(done, pad_id)
        active = ~done
        gen[live[active], t] = nxt[active]
        hit = torch.isin(nxt, eos_t) & active
        lengths[live[hit]] = t + 1
        done |= hit
        n_done = int(done.sum())
        if n_done == len(live) or t == max_new_tokens - 1:
            break
        if n_done and n_done >= PRUNE_SHARE * len(live):  # drop the finished rows
            keep = (~done).nonzero().squeeze(1)
            mask, nxt, live, pos = mask[keep], nxt[keep], live[keep], pos[keep]
            done = done[keep]  # padding columns stay: dropping them changed bf16 replies (docs/benchmarks.md)
            if use_cache:
                for layer in cache.layers:
                    layer.keep(keep, 0)
            else:
                seq = seq[keep]
        mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
        step_pos = pos[:, -1:] + 1
        pos = torch.cat([pos, step_pos], dim=1)
        if use_cache:
            logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=step_pos, **kw).logits[:, -1].float()
        else:
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            logits = model(input_ids=seq, attention_mask=mask, position_ids=pos, **kw).logits[:, -1].float()
    return [row[:n] for row, n in zip(gen.tolist(), lengths.tolist())]
