"""split_parts / train_val_split."""

from __future__ import annotations

import pytest

from tandem.data import split_parts, train_val_split


def test_split_parts_disjoint_covering_equal_seeded():
    items = list(range(103))
    parts = split_parts(items, 4, seed=7)
    assert [len(p) for p in parts] == [25] * 4  # 103 // 4; the remainder of 3 is dropped
    flat = [x for p in parts for x in p]
    assert len(set(flat)) == 100 and set(flat) <= set(items)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not set(parts[i]) & set(parts[j])
    assert split_parts(items, 4, seed=7) == parts
    assert split_parts(items, 4, seed=8) != parts
    assert parts[0] != list(range(25))  # shuffled
    exact = split_parts(list(range(12)), 3, seed=0)
    assert sorted(x for p in exact for x in p) == list(range(12))  # no remainder: covers everything
    assert split_parts([1, 2, 3], 1, seed=0)[0] in ([1, 2, 3], [1, 3, 2], [2, 1, 3], [2, 3, 1], [3, 1, 2], [3, 2, 1])


def test_split_parts_errors():
    with pytest.raises(ValueError, match="non-empty"):
        split_parts([1, 2], 3, seed=0)
    with pytest.raises(ValueError, match=">= 1"):
        split_parts([1, 2], 0, seed=0)


def test_train_val_split():
    items = list(range(50))
    train, val = train_val_split(items, val_size=10, seed=1)
    assert len(train) == 40 and len(val) == 10 and sorted(train + val) == items
    assert train_val_split(items, val_size=10, seed=1) == (train, val)
    train, val = train_val_split(items, val_fraction=0.1, seed=1)
    assert len(val) == 5 and sorted(train + val) == items
    assert len(train_val_split(items[:3], val_fraction=0.01, seed=0)[1]) == 1
    with pytest.raises(ValueError, match="exactly one"):
        train_val_split(items, seed=0)
    with pytest.raises(ValueError, match="no training data"):
        train_val_split(items, val_size=50, seed=0)
