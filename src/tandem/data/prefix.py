"""Prefix sharing: a prompt computed once for all the sequences that start with it (``batching.prefix_sharing``).

As in "Accelerating Direct Preference Optimization with Prefix Sharing" (Wang et al. 2024, arXiv 2410.20305):
sequences that start with the same unlabelled tokens (the prompt) become one block of segments, packed into rows
like any sequence in ``pack`` mode. A preference pair is a block of two (chosen, rejected); a GRPO / RLOO group
(features with the same ``group`` key: one prompt's ``num_generations`` completions) a block of ``G``::

    [prefix: ids_1[:k]] [segment 1: ids_1[k:]] [segment 2: ids_2[k-1:]] ... [segment n: ids_n[k-1:]]

``k`` is the shared length: the longest common prefix of all the ``input_ids``, cut at the first labelled token of
any of them (labels in the prefix are all ``-100``). Attention (a ``[R, 1, T, T]`` boolean mask, True = attend, in
the batch's ``attention_mask``): the prefix is causal within itself; segment 1 sees the whole prefix and itself
causally; every later segment sees ``prefix[:k-1]`` and itself causally. Its first token is a copy of the prefix's
last one (position ``k-1``), so each of its labelled tokens is predicted from the hidden state just before it in
the row, as every other token is (labels stay unshifted, the batch contract holds). ``position_ids`` continue the
prefix: ``0..k-1``, then ``k..`` for segment 1 and ``k-1..`` for the others, so every token sees exactly the
context and positions it has in its own sequence, and the per-sequence log-probs equal those of the unshared layout.

``seq_ids`` keep the contract (pairs: chosen ``i``, rejected ``B + i``; groups: each feature's index); prefix tokens
belong to the first sequence of the block (they carry no labels). Padding: ``input_ids = pad_id``, ``labels =
-100``, ``seq_ids = -1``, causal among itself. Sequences without a common unlabelled prefix (``k = 0``) are plain
sequences in one block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100


@dataclass(frozen=True)
class SharedBlock:
    """Sequences sharing one prefix: ``prefix`` tokens, then one segment per sequence (``segments``: their lengths)."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    seq_ids: list[int]
    prefix: int  # k: tokens of the shared prefix segment
    segments: tuple[int, ...]  # tokens of each sequence's segment after the prefix (the first one's from k, others' from k-1)

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


def shared_block(seqs: list[tuple[list[int], list[int], int]]) -> SharedBlock:
    """The block of ``(input_ids, labels, seq_id)`` sequences (module docstring)."""
    for x, y, sid in seqs:
        if len(x) != len(y):
            raise ValueError(f"sequence {sid}: input_ids and labels differ in length ({len(x)} vs {len(y)})")
    (ids, lab, sid0), rest = seqs[0], seqs[1:]
    k = min((shared_length(ids, lab, x, y) for x, y, _ in rest), default=0)
    kr = max(k - 1, 0)  # later segments repeat the prefix's last token
    out_ids, out_lab, pos, sid = list(ids), list(lab), list(range(len(ids))), [sid0] * len(ids)
    segments = [len(ids) - k]
    for x, y, s in rest:
        out_ids += x[kr:]
        out_lab += y[kr:]
        pos += range(kr, len(x))
        sid += [s] * (len(x) - kr)
        segments.append(len(x) - kr)
    return SharedBlock(input_ids=out_ids, labels=out_lab, position_ids=pos, seq_ids=sid, prefix=k, segments=tuple(segments))


def pair_block(feature: dict, i: int, num_pairs: int) -> SharedBlock:
    """The block of pair ``i`` (of ``num_pairs``) of a preference feature."""
    c_ids, c_lab = feature["chosen_input_ids"], feature["chosen_labels"]
    r_ids, r_lab = feature["rejected_input_ids"], feature["rejected_labels"]
    for name, x, y in (("chosen", c_ids, c_lab), ("rejected", r_ids, r_lab)):
        if len(x) != len(y):
            raise ValueError(f"pair {i}: {name} input_ids and labels differ in length ({len(x)} vs {len(y)})")
    return shared_block([(c_ids, c_lab, i), (r_ids, r_lab, num_pairs + i)])


def block_mask(block: SharedBlock) -> torch.Tensor:
    """``[n, n]`` boolean attention of one block (True = the row's token attends to the column's)."""
    n, kr = len(block), max(block.prefix - 1, 0)
    mask = torch.ones(n, n, dtype=torch.bool).tril_()
    o = block.prefix + block.segments[0]
    for seg in block.segments[1:]:
        mask[o : o + seg, kr:o] = False  # a later segment: not the segments before it nor the prefix's last token
        o += seg
    return mask


def collate_shared(blks: list[SharedBlock], layout: list[list[int]], pad_id: int) -> dict:
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


def blocks(features: list[dict]) -> list[SharedBlock]:
    """The pair blocks of preference features, in pair order."""
    if not features or "chosen_input_ids" not in features[0]:
        raise ValueError("prefix sharing: needs preference features (chosen_input_ids / rejected_input_ids)")
    return [pair_block(f, i, len(features)) for i, f in enumerate(features)]


def group_blocks(features: list[dict]) -> list[SharedBlock]:
    """One block per ``group`` of SFT-layout features (``input_ids``, ``labels``, ``group``), in order of first
    appearance; each sequence keeps its feature index as its ``seq_id``."""
    order: dict = {}
    for i, f in enumerate(features):
        order.setdefault(f["group"], []).append(i)
    return [shared_block([(features[i]["input_ids"], features[i]["labels"], i) for i in idx]) for idx in order.values()]
