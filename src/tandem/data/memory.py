"""Data given as Python objects (``tandem.train(data={"preference": dataset})``): a ``datasets.Dataset``, a list of
dicts, or a list of strings (plain text), read through the same format detection and checks as a file.

:func:`register` keeps the rows under a source name ``memory://<role>-<sha256 prefix>`` that stands for them in the
recipe (``recipe.yaml`` records it, so ``resume`` with other rows is refused as a changed recipe);
:func:`tandem.data.readers.iter_records` reads such a name from here. The rows live as long as the process.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterator

from tandem.data.errors import DataError

PREFIX = "memory://"
_ROWS: dict[str, list[dict]] = {}


def is_memory(source: str) -> bool:
    return isinstance(source, str) and source.startswith(PREFIX)


def as_rows(data: Any, what: str) -> list[dict]:
    """The rows of ``data`` as dicts: a ``datasets.Dataset`` (not a ``DatasetDict``: pick a split), a list of dicts,
    or a list of strings (each ``{"text": s}``)."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - a core dependency
        datasets = None
    if datasets is not None and isinstance(data, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise DataError(f"{what}: a DatasetDict with splits {sorted(data)}; give one split, e.g. data['train']")
    if datasets is not None and isinstance(data, (datasets.Dataset, datasets.IterableDataset)):
        return [dict(r) for r in data]
    if isinstance(data, (list, tuple)):
        if all(isinstance(r, str) for r in data):
            return [{"text": r} for r in data]
        bad = next((i for i, r in enumerate(data) if not isinstance(r, dict)), None)
        if bad is not None:
            raise DataError(f"{what}, row {bad + 1}: expected a dict (a record), got {type(data[bad]).__name__}")
        return [dict(r) for r in data]
    raise DataError(f"{what}: expected a datasets.Dataset, a list of dicts, a list of strings or a path, "
                    f"got {type(data).__name__}")


def register(data: Any, role: str) -> str:
    """Keep ``data``'s rows; returns the source name that reads them (same rows, same name)."""
    rows = as_rows(data, f"data[{role!r}]")
    if not rows:
        raise DataError(f"data[{role!r}]: no rows")
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]
    name = f"{PREFIX}{role}-{digest}"
    _ROWS[name] = rows
    return name


def iter_rows(source: str) -> Iterator[tuple[dict, None]]:
    """``(record, None)`` for each row kept under ``source``."""
    if source not in _ROWS:
        raise DataError(f"{source}: in-memory data of another Python process; pass the data again "
                        "(tandem.train(..., data=...))")
    return ((dict(r), None) for r in _ROWS[source])


__all__ = ["PREFIX", "as_rows", "is_memory", "iter_rows", "register"]
