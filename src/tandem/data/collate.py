"""Features -> batch tensors (see the batch contract in docs/architecture.md), and batch index lists.

Sequences: an SFT feature is one sequence; ``B`` preference features give ``2B`` sequences, the chosen ones
``0..B-1`` then the rejected ones ``B..2B-1`` in pair order; ``B`` unpaired (KTO) features give their completions
``0..B-1`` then their KL sequences ``B..2B-1``, in rows of their own (no row mixes the two halves), so the KTO objective
can run the KL half without gradients.

Layouts:

* ``pad``: one sequence per row, right-padded to the longest; ``attention_mask`` is 1 on tokens, 0 on padding.
* ``pack`` with ``max_tokens_per_row=None``: every sequence in one row, back to back, no padding.
* ``pack`` with ``max_tokens_per_row=L``: first-fit-decreasing bin packing of the sequences (longest first,
  each into the first row with room, a new row otherwise) into rows of at most ``L`` tokens (a longer sequence
  gets a row of its own); rows are padded at the end to the longest row.

Every sequence's ``position_ids`` restart at 0, so packed sequences do not attend to each other (the model is
called without an attention mask). Padding has ``input_ids = pad_id``, ``labels = -100``, ``seq_ids = -1`` and
``position_ids`` ``0, 1, 2, ...`` (a block of its own, after every real token, so it is never attended to).
``ref_*`` scalars, a KTO feature's ``label`` and a pair's ``margin`` are stacked per feature into float32 tensors of
shape ``[len(features)]`` (a pair without a margin, from another source, counts 0).

``prefix_sharing`` (pack mode, preference features): each pair is one block [prompt][chosen][rejected] with a
``[R, 1, T, T]`` boolean ``attention_mask`` (see :mod:`tandem.data.prefix`); the blocks are packed like sequences.
SFT-layout features with a ``group`` key (a GRPO / RLOO rollout: one prompt's completions) are one block per group;
SFT features without one ignore it.
"""

from __future__ import annotations

import random

import torch

from tandem.data.prefix import blocks, collate_shared, group_blocks

IGNORE = -100
PREFERENCE_KEYS = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")
SCALAR_KEYS = ("label", "margin")  # besides ref_*: per-feature numbers batched as float32 tensors


def sequences(features: list[dict]) -> list[tuple[list[int], list[int]]]:
    """The ``(input_ids, labels)`` of every sequence in contract order."""
    if not features:
        raise ValueError("collate: no features")
    if "chosen_input_ids" in features[0]:
        return [(f["chosen_input_ids"], f["chosen_labels"]) for f in features] + [
            (f["rejected_input_ids"], f["rejected_labels"]) for f in features
        ]
    if "kl_input_ids" in features[0]:
        return [(f["input_ids"], f["labels"]) for f in features] + [(f["kl_input_ids"], f["kl_labels"]) for f in features]
    return [(f["input_ids"], f["labels"]) for f in features]


def _first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def _pack_layout(lengths: list[int], max_tokens_per_row: int | None) -> list[list[int]]:
    if max_tokens_per_row is None:
        return [list(range(len(lengths)))]
    if max_tokens_per_row < 1:
        raise ValueError(f"max_tokens_per_row must be positive, got {max_tokens_per_row}")
    return _first_fit_decreasing(lengths, max_tokens_per_row)


def collate(features: list[dict], mode: str = "pack", pad_id: int = 0, max_tokens_per_row: int | None = None,
            prefix_sharing: bool = False) -> dict:
    """Batch dict of ``input_ids``, ``labels``, ``position_ids``, ``seq_ids`` (and ``attention_mask`` in pad
    mode or with ``prefix_sharing``, ``ref_*`` when present) from SFT or preference features."""
    if pad_id is None:
        raise ValueError("collate: pad_id is None; pass tokenizer.pad_token_id (or eos_token_id when there is no pad token)")
    seqs = sequences(features)
    if prefix_sharing and ("chosen_input_ids" in features[0] or "group" in features[0]):  # pairs; GRPO / RLOO groups
        if mode != "pack":
            raise ValueError(f"collate: prefix_sharing needs mode 'pack', got {mode!r}")
        blks = blocks(features) if "chosen_input_ids" in features[0] else group_blocks(features)
        return _with_refs(collate_shared(blks, _pack_layout([len(b) for b in blks], max_tokens_per_row), pad_id), features)
    if mode == "pad":
        layout = [[i] for i in range(len(seqs))]
    elif mode == "pack" and "kl_input_ids" in features[0]:  # KTO: completions and KL sequences in separate rows
        b = len(features)
        layout = _pack_layout([len(s[0]) for s in seqs[:b]], max_tokens_per_row) + [
            [i + b for i in row] for row in _pack_layout([len(s[0]) for s in seqs[b:]], max_tokens_per_row)]
    elif mode == "pack":
        layout = _pack_layout([len(s[0]) for s in seqs], max_tokens_per_row)
    else:
        raise ValueError(f"collate mode must be 'pack' or 'pad', got {mode!r}")

    width = max(sum(len(seqs[i][0]) for i in row) for row in layout)
    ids, labels, pos, sid, mask = [], [], [], [], []
    for row in layout:
        r_ids, r_lab, r_pos, r_sid = [], [], [], []
        for i in row:
            x, y = seqs[i]
            if len(x) != len(y):
                raise ValueError(f"sequence {i}: input_ids and labels differ in length ({len(x)} vs {len(y)})")
            r_ids += x
            r_lab += y
            r_pos += range(len(x))
            r_sid += [i] * len(x)
        n_pad = width - len(r_ids)
        mask.append([1] * len(r_ids) + [0] * n_pad)
        ids.append(r_ids + [pad_id] * n_pad)
        labels.append(r_lab + [IGNORE] * n_pad)
        pos.append(r_pos + list(range(n_pad)))
        sid.append(r_sid + [-1] * n_pad)

    batch = {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "position_ids": torch.tensor(pos, dtype=torch.long),
        "seq_ids": torch.tensor(sid, dtype=torch.long),
    }
    if mode == "pad":
        batch["attention_mask"] = torch.tensor(mask, dtype=torch.long)
    return _with_refs(batch, features)


def _with_refs(batch: dict, features: list[dict]) -> dict:
    for key in sorted(k for k in features[0] if k.startswith("ref_")):
        batch[key] = torch.tensor([float(f[key]) for f in features], dtype=torch.float32)
    for key in SCALAR_KEYS:
        if any(key in f for f in features):
            batch[key] = torch.tensor([float(f.get(key, 0.0)) for f in features], dtype=torch.float32)
    return batch


def feature_length(feature: dict) -> int:
    """Tokens of a feature (both sequences of a preference pair, a KTO completion and its KL sequence)."""
    if "chosen_input_ids" in feature:
        return len(feature["chosen_input_ids"]) + len(feature["rejected_input_ids"])
    if "kl_input_ids" in feature:
        return len(feature["input_ids"]) + len(feature["kl_input_ids"])
    return len(feature["input_ids"])


def batches(
    features: list[dict], batch_size: int, shuffle_seed: int | None = 0, group_by_length: bool = False
) -> list[list[int]]:
    """Index lists of the batches of one epoch.

    * ``shuffle_seed=None``: the given order, cut into batches.
    * otherwise a seeded shuffle of all indices; with ``group_by_length`` the shuffled indices are cut into
      mega-batches of ``50 * batch_size``, each sorted by length (longest first) and cut into batches, and
      the batch order is shuffled again, so batches hold examples of similar length yet come in random order.

    Every batch has ``batch_size`` indices except possibly one, which is always the **last**.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    idx = list(range(len(features)))
    if shuffle_seed is None:
        return [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
    rng = random.Random(shuffle_seed)
    rng.shuffle(idx)
    if not group_by_length:
        return [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
    mega = 50 * batch_size
    out: list[list[int]] = []
    for m in range(0, len(idx), mega):
        chunk = sorted(idx[m : m + mega], key=lambda i: -feature_length(features[i]))
        out += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    full = [b for b in out if len(b) == batch_size]
    rest = [b for b in out if len(b) < batch_size]
    rng.shuffle(full)
    return full + rest
