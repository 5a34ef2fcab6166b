"""Sparse token weighting: DPO on a margin made of the tokens where the two responses differ.

Shared tokens are the source of most gradient entanglement: a token that both responses contain after they
have diverged (the ``.`` in "The answer is 5." vs "The answer is 6.") has nearly the same gradient in both,
yet DPO pushes it up in one response and down in the other. Here every response token gets a computed weight:

    a = chosen response tokens, b = rejected response tokens (labelled ids, EOS included)
    shared(t) = token t lies in a matching block of difflib.SequenceMatcher(a, b, autojunk=False)
    w_t       = shared_weight if shared(t) else 1            (shared_weight = 0 by default)
    w_t       = 1 for every token of a response whose tokens are *all* shared (uniform fallback)

    h    = sum_t w^c_t (logp^c_t - ref^c_t) - sum_t w^r_t (logp^r_t - ref^r_t)
    loss = mean over pairs of -log sigmoid(beta h)

The matching blocks align the two token sequences (longest common blocks, like ``diff``), so a shared suffix
after an insertion is still recognised as shared; for equal-length responses that differ by substitutions it is
the same as comparing tokens position by position. Tokens of a common prefix have identical log-probs in both
responses and cancel in DPO's margin anyway; the weights change what happens to shared tokens after the first
difference, which no longer contribute to the margin nor receive its gradient.

When one response is a subsequence of the other (the chosen reply is the rejected one with a sentence removed),
every token of the shorter one is shared, so with ``shared_weight = 0`` it would get weight 0 and no gradient at
all: that response falls back to uniform weights (1 on every token, its whole log-prob enters the margin as in
DPO), while the other response keeps its sparse weights.

The weights are computed, not learned: they are binary, so already as sparse as an L1 penalty would make them,
and there is no penalty term (a learnable-weight variant with an L1 penalty is not implemented). The reference
values ``ref_chosen_logp`` / ``ref_rejected_logp`` are the same *weighted* sums under the model at the start of
the stage (``prepare``, one no-grad pass), so they are not interchangeable with DPO's.

Cost: as DPO (one forward/backward), plus a ``difflib`` match per pair on CPU (response lengths squared at
worst, milliseconds for a few hundred tokens). Metrics: ``loss``, ``chosen_logp`` / ``rejected_logp`` (full,
unweighted policy sums), ``rewards/margin = beta h``, ``rewards/accuracy``, ``token_weight/chosen`` /
``token_weight/rejected`` (mean weight, i.e. fraction of differing tokens when ``shared_weight = 0``).
"""

from __future__ import annotations

import difflib

import torch

from tandem.objectives.dpo import REF_KEYS, dpo_loss, reference_values
from tandem.objectives.logprobs import IGNORE, token_logps


def shared_mask(a: list[int], b: list[int]) -> tuple[list[bool], list[bool]]:
    """Which tokens of ``a`` and of ``b`` lie in the matching blocks of ``SequenceMatcher(a, b)``."""
    sa, sb = [False] * len(a), [False] * len(b)
    for i, j, n in difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks():
        for k in range(n):
            sa[i + k] = True
            sb[j + k] = True
    return sa, sb


def token_weights(ids: list[int], seqs: list[int], num_pairs: int, shared_weight: float = 0.0) -> list[float]:
    """Weight of every labelled token (same order as ``ids``/``seqs`` from :func:`token_logps`): chosen
    sequence ``i`` is matched against rejected sequence ``num_pairs + i``; a sequence whose tokens are all shared
    gets weight 1 on every token."""
    by_seq: dict[int, list[int]] = {}
    pos = []
    for t, s in zip(ids, seqs):
        lst = by_seq.setdefault(s, [])
        pos.append(len(lst))
        lst.append(t)
    masks: dict[int, list[bool]] = {}
    for i in range(num_pairs):
        masks[i], masks[num_pairs + i] = shared_mask(by_seq.get(i, []), by_seq.get(num_pairs + i, []))
    uniform = {s for s, m in masks.items() if m and all(m)}  # every token shared: fall back to uniform weights
    return [1.0 if s in uniform or not masks[s][p] else shared_weight for s, p in zip(seqs, pos)]


class SparseToken:
    """DPO on a difflib-weighted token margin (see the module docstring)."""

    data_kind = "preference"
    unit = "examples"

    def __init__(self, beta: float = 0.1, shared_weight: float = 0.0):
        if not beta > 0:
            raise ValueError(f"sparse_token beta must be > 0, got {beta}")
        if not 0.0 <= shared_weight <= 1.0:
            raise ValueError(f"sparse_token shared_weight must be in [0, 1], got {shared_weight}")
        self.beta, self.shared_weight = beta, shared_weight

    def _tokens(self, model, batch):
        """``(logps[N], seq[N], ids[N])`` of the labelled tokens."""
        logps, seq = token_logps(model, batch)
        target = batch["labels"][:, 1:]
        ids = target[target != IGNORE]
        return logps, seq, ids

    def _weighted(self, model, batch, b: int):
        """``(weighted sums[2B], plain sums[2B], mean weight[2B])`` per sequence."""
        logps, seq, ids = self._tokens(model, batch)
        w = torch.tensor(token_weights(ids.tolist(), seq.tolist(), b, self.shared_weight), dtype=logps.dtype,
                         device=logps.device)
        zeros = torch.zeros(2 * b, dtype=logps.dtype, device=logps.device)
        weighted = zeros.index_add(0, seq, w * logps)
        plain = zeros.index_add(0, seq, logps)
        mean_w = zeros.index_add(0, seq, w) / zeros.index_add(0, seq, torch.ones_like(w)).clamp(min=1)
        return weighted, plain, mean_w

    def prepare(self, model, features, batch_fn, batch_size: int = 16):
        """Features with the weighted reference sums (eval mode; features that carry both keep them)."""
        return reference_values(model, features, batch_fn, lambda m, bt, b: self._weighted(m, bt, b)[0], batch_size)

    def __call__(self, model, batch):
        if not all(k in batch for k in REF_KEYS):
            raise KeyError("sparse_token batch has no ref_chosen_logp / ref_rejected_logp: run prepare on the "
                           "features first (the engine does this at the start of each stage)")
        b = int(batch["ref_chosen_logp"].shape[0])
        weighted, plain, mean_w = self._weighted(model, batch, b)
        rc = weighted[:b] - batch["ref_chosen_logp"].to(weighted)
        rr = weighted[b:] - batch["ref_rejected_logp"].to(weighted)
        h = rc - rr
        loss = dpo_loss(h, self.beta).mean()
        return loss, {
            "loss": float(loss.detach()),
            "chosen_logp": float(plain[:b].detach().mean()),
            "rejected_logp": float(plain[b:].detach().mean()),
            "rewards/chosen": self.beta * float(rc.detach().mean()),
            "rewards/rejected": self.beta * float(rr.detach().mean()),
            "rewards/margin": self.beta * float(h.detach().mean()),
            "rewards/accuracy": float((h > 0).float().mean()),
            "token_weight/chosen": float(mean_w[:b].mean()),
            "token_weight/rejected": float(mean_w[b:].mean()),
        }
