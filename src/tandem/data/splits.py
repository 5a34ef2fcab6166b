"""Seeded, mutually exclusive splits of a list (of examples or features)."""

from __future__ import annotations

import random
from typing import TypeVar

T = TypeVar("T")


def _shuffled(items: list[T], seed: int) -> list[T]:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


def split_parts(items: list[T], n: int, seed: int) -> list[list[T]]:
    """``n`` disjoint parts of equal size ``len(items) // n`` after a seeded shuffle.

    The remainder (``len(items) % n < n`` items, the last ones of the shuffled order) is dropped so every part
    has the same size. Raises ``ValueError`` if ``n < 1`` or there are fewer items than parts.
    """
    if n < 1:
        raise ValueError(f"number of parts must be >= 1, got {n}")
    size = len(items) // n
    if size == 0:
        raise ValueError(f"cannot split {len(items)} items into {n} non-empty parts")
    s = _shuffled(items, seed)
    return [s[k * size : (k + 1) * size] for k in range(n)]


def train_val_split(
    items: list[T], val_fraction: float | None = None, val_size: int | None = None, seed: int = 0
) -> tuple[list[T], list[T]]:
    """``(train, val)`` after a seeded shuffle; give exactly one of ``val_fraction`` (rounded, at least 1 when
    positive) or ``val_size``. At least one training item must remain."""
    if (val_fraction is None) == (val_size is None):
        raise ValueError("give exactly one of val_fraction or val_size")
    if val_fraction is not None:
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        val_size = max(1, round(len(items) * val_fraction)) if val_fraction > 0 else 0
    if val_size < 0 or val_size >= len(items):
        raise ValueError(f"val_size {val_size} leaves no training data out of {len(items)} items")
    s = _shuffled(items, seed)
    return s[val_size:], s[:val_size]
