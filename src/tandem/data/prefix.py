"""Prefix sharing for preference pairs: the prompt is computed once per pair (``batching.prefix_sharing``).

As in "Accelerating Direct Preference Optimization with Prefix Sharing" (Wang et al. 2024, arXiv 2410.20305):
a pair whose chosen and rejected sequences start with the same unlabelled tokens (the prompt) becomes one
block of three segments, packed into rows like any sequence in ``pack`` mode::

    [prefix: ids[:k]] [chosen: chosen_ids[k:]] [rejected: rejected_ids[k-1:]]

``k`` is the shared length: the longest common prefix of the two ``input_ids``, cut at the first labelled token
of either sequence (labels in the prefix are all ``-100``). Attention (a ``[R, 1, T, T]`` boolean mask, True =
attend, in the batch's ``attention_mask``): the prefix is causal within itself; the chosen segment sees the whole
prefix and itself causally; the rejected segment sees ``prefix[:k-1]`` and itself causally. Its first token is a
copy of the prefix's last one (position ``k-1``), so each of its labelled tokens is predicted from the hidden
state just before it in the row, as every other token is (labels stay unshifted, the batch contract holds).
``position_ids`` continue the prefix: ``0..k-1``, then ``k..`` for the chosen reply and ``k-1..`` for the rejected
one, so every token sees exactly the context and positions it has in its own sequence, and the per-sequence
log-probs equal those of the unshared layout.

``seq_ids`` keep the contract (chosen ``i``, rejected ``B + i``); prefix tokens belong to the chosen sequence
``i`` (they carry no labels). Padding: ``input_ids = pad_id``, ``labels = -100``, ``seq_ids = -1``, causal among
itself. A pair without a common unlabelled prefix (``k = 0``) is two plain sequences in one block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100


@dataclass(frozen=True)
class PairBlock:
    """One pair's tokens in the shared layout; ``prefix`` tokens, then chosen, then rejected segment."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    seq_ids: list[int]
    prefix: int  # k: tokens of the shared prefix segment
    chosen: int  # tokens of the chosen segment (after the prefix)

    def __len__(self) -> int:
        return len(self.input_ids)


def shared_length(c_ids: list[int], c_lab: list[int], r_ids: list[int], r_lab: list[int]) -> int:
    """``k``: longest common prefix of the two sequences in which neither has a label."""
    k = 0
    for a, b, la, lb in zip(c_ids, r_ids, c_lab, r_lab):
        if a != b or la != IGNORE or lb != IGNORE:
            break
        k += 1
    return k


def pair_block(feature: dict, i: int, num_pairs: int) -> PairBlock:
    """The block of pair ``i`` (of ``num_pairs``) of a preference feature."""
    c_ids, c_lab = feature["chosen_input_ids"], feature["chosen_labels"]
    r_ids, r_lab = feature["rejected_input_ids"], feature["rejected_labels"]
    for name, x, y in (("chosen", c_ids, c_lab), ("rejected", r_ids, r_lab)):
        if len(x) != len(y):
            raise ValueError(f"pair {i}: {name} input_ids and labels differ in length ({len(x)} vs {len(y)})")
    k = shared_length(c_ids, c_lab, r_ids, r_lab)
    kr = max(k - 1, 0)  # the rejected segment repeats the prefix's last token
    return PairBlock(
        input_ids=c_ids + r_ids[kr:],
        labels=c_lab + r_lab[kr:],
        position_ids=list(range(len(c_ids))) + list(range(kr, len(r_ids))),
        seq_ids=[i] * len(c_ids) + [num_pairs + i] * (len(r_ids) - kr),
        prefix=k,
        chosen=len(c_ids) - k,
    )


def block_mask(block: PairBlock) -> torch.Tensor:
    """``[n, n]`` boolean attention of one block (True = the row's token attends to the column's)."""
    n, k, c = len(block), block.prefix, block.chosen
    mask = torch.ones(n, n, dtype=torch.bool).tril_()
    rej = k + c
    mask[rej:, max(k - 1, 0) : rej] = False  # rejected: not the chosen segment nor the prefix's last token
    return mask


def collate_shared(blks: list[PairBlock], layout: list[list[int]], pad_id: int) -> dict:
    """Batch of the pair blocks ``blks`` (see :func:`blocks`) in rows ``layout`` (lists of block indices):
    ``input_ids``, ``labels``, ``position_ids``, ``seq_ids`` ``[R, T]`` and ``attention_mask`` ``[R, 1, T, T]``
    (bool)."""
    width = max(sum(len(blks[i]) for i in row) for row in layout)
    ids = torch.full((len(layout), width), pad_id, dtype=torch.long)
    labels = torch.full((len(layout), width), IGNORE, dtype=torch.long)
    pos = torch.arange(width).repeat(len(layout), 1)
    sid = torch.full((len(layout), width), -1, dtype=torch.long)
    mask = torch.zeros(len(layout), 1, width, width, dtype=torch.bool)
    for r, row in enumerate(layout):
        o = 0
        for i in row:
            b = blks[i]
            s = slice(o, o + len(b))
            ids[r, s] = torch.tensor(b.input_ids)
            labels[r, s] = torch.tensor(b.labels)
            pos[r, s] = torch.tensor(b.position_ids)
            sid[r, s] = torch.tensor(b.seq_ids)
            mask[r, 0, s, s] = block_mask(b)
            o += len(b)
        pos[r, o:] = torch.arange(width - o)
        mask[r, 0, o:, o:] = torch.ones(width - o, width - o, dtype=torch.bool).tril_()
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "seq_ids": sid, "attention_mask": mask}


def blocks(features: list[dict]) -> list[PairBlock]:
    """The pair blocks of preference features, in pair order."""
    if not features or "chosen_input_ids" not in features[0]:
        raise ValueError("prefix sharing: needs preference features (chosen_input_ids / rejected_input_ids)")
    return [pair_block(f, i, len(features)) for i, f in enumerate(features)]
