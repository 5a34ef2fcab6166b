"""Read raw records (one ``dict`` per row) from local files or the Hugging Face Hub, one row at a time.

Accepted sources (see docs/formats.md):

* ``*.jsonl`` / ``*.jsonl.gz``: one JSON object per line (blank lines are ignored), read by tandem's own
  line reader (:mod:`tandem.data.lines`), one line at a time;
* ``*.json`` / ``*.json.gz``: a JSON array of objects, or JSON Lines despite the name (decided by the first
  non-blank character: ``[`` means an array; an array is parsed whole);
* ``*.csv`` / ``*.tsv`` (optionally ``.gz``) and ``*.parquet``: loaded with ``datasets.load_dataset("csv" |
  "parquet", data_files=...)`` (:mod:`tandem.data.tables`);
* a directory written by ``datasets.Dataset.save_to_disk`` (``split`` picks from a ``DatasetDict``);
* anything else is taken as a Hugging Face dataset name, ``"name"`` or ``"name:config"``, loaded with
  ``datasets.load_dataset(name, config, split=split)``.

``streaming=True`` asks ``datasets`` for an iterable dataset (no Arrow copy in the cache, rows read as they are
used, so ``limit`` reads only what it needs); JSON Lines are always read lazily.

Why JSON Lines stay on the line reader rather than ``datasets``' JSON loader: the line reader names the file
and the 1-based line of malformed JSON, of bytes that are not UTF-8 (a UTF-8 BOM at the start is accepted)
and of a record that is not an object; it refuses a record longer than ``max_record_bytes`` (default
:data:`MAX_RECORD_BYTES`, 10 MiB) before reading it whole; and it returns each record exactly as written,
whereas ``datasets`` infers one schema for the whole file (absent keys become ``null`` in every row, a field
that is a string in one row and a list in another fails without a line number).

A source that looks like a local path (a data-file suffix, a leading ``.``/``/``/``~``, or more than one
``/``) and does not exist raises :class:`DataFileNotFound` (``data file not found: PATH``) instead of being
tried on the Hub.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from tandem.data import tables
from tandem.data.errors import DataError, DataFileNotFound
from tandem.data.lines import MAX_RECORD_BYTES, iter_lines, open_binary
from tandem.data.memory import is_memory, iter_rows

JSON_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
LOCAL_SUFFIXES = JSON_SUFFIXES + tables.CSV_SUFFIXES + (".parquet",)

Rows = Iterator[tuple[dict, "int | None"]]  # (record, its 1-based line or None)

__all__ = ["LOCAL_SUFFIXES", "MAX_RECORD_BYTES", "iter_records", "looks_local", "read_hub", "read_json_file",
           "read_json_lines", "read_parquet", "read_records", "read_records_with_lines"]


def _check_object(rec, where: str) -> dict:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object per record, got {type(rec).__name__}")
    return rec


def _first_char(path: Path) -> bytes:
    """The first non-blank byte of the file (reads only up to it)."""
    try:
        with open_binary(path) as f:
            while chunk := f.read(4096):
                stripped = chunk.lstrip().lstrip(b"\xef\xbb\xbf").lstrip()
                if stripped:
                    return stripped[:1]
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    return b""


def _strict_json(text: str, where: str):
    """``json.loads`` that refuses a key given twice in one object and NUL characters (raw or ``\\u0000``)."""
    def pairs(items):
        seen = set()
        for k, _ in items:
            if k in seen:
                raise DataError(f"{where}: key {k!r} is given twice in one object; keep one")
            seen.add(k)
        return dict(items)

    if "\x00" in text or "\\u0000" in text:
        raise DataError(f"{where}: a NUL character (\\u0000) in the data; remove it (a binary file or a bad export?)")
    return json.loads(text, object_pairs_hook=pairs)


def _iter_jsonl(path: Path, cap: int) -> Rows:
    for lineno, text in iter_lines(path, cap):
        if not text.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = _strict_json(text, where)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
        yield _check_object(rec, where), lineno


def _read_json_array(path: Path) -> list[dict]:
    try:
        with open_binary(path) as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte {raw[e.start]:#04x}); convert the file to UTF-8") from None
    try:
        data = _strict_json(text, str(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
    return [_check_object(r, f"{path}: element {i}") for i, r in enumerate(data, start=1)]


def iter_json(path: Path, max_record_bytes: int = MAX_RECORD_BYTES) -> Rows:
    """Rows of a ``.json``/``.jsonl`` file (optionally gzipped): JSON Lines lazily with their line numbers, a JSON
    array whole (line ``None``)."""
    if _first_char(path) == b"[" and not path.name.endswith((".jsonl", ".jsonl.gz")):
        return ((r, None) for r in _read_json_array(path))
    return _iter_jsonl(path, max_record_bytes)


def looks_local(source: str) -> bool:
    """True when ``source`` reads as a local path rather than a Hub dataset name (see the module docstring)."""
    return not is_memory(source) and (
        source.lower().endswith(LOCAL_SUFFIXES)
        or source.startswith((".", "/", "~"))
        or source.count("/") > 1
        or "\\" in source
    )


def iter_records(source: str, split: str = "train", max_record_bytes: int = MAX_RECORD_BYTES,
                 streaming: bool = False) -> Rows:
    """``(record, line)`` pairs of ``source`` (a local file, a saved dataset directory, or a Hub dataset name),
    one at a time; ``line`` is the record's 1-based line (``None`` where rows are not lines). A missing local
    file, an unsupported suffix or a dataset that cannot be opened is refused here, before iteration."""
    if is_memory(source):  # rows given as Python objects (tandem.data.memory)
        return iter_rows(source)
    path = Path(source).expanduser()
    if path.is_dir():
        return tables.iter_saved(path, split)
    if path.is_file():
        name = path.name.lower()
        if name.endswith(JSON_SUFFIXES):
            return iter_json(path, max_record_bytes)
        if name.endswith(tables.CSV_SUFFIXES):
            return tables.iter_csv(path, max_record_bytes, streaming)
        if name.endswith(".parquet"):
            return tables.iter_parquet(path, streaming)
        raise DataError(f"{path}: unsupported file type (accepted: {', '.join(LOCAL_SUFFIXES)})")
    if looks_local(source):
        raise DataFileNotFound(f"data file not found: {source}")
    return tables.iter_hub(source, split, streaming)


def _collect(rows: Rows) -> tuple[list[dict], list[int] | None]:
    records, lines = [], []
    for rec, line in rows:
        records.append(rec)
        lines.append(line)
    return records, (lines if lines and all(n is not None for n in lines) else None)


def read_json_lines(path: Path, max_record_bytes: int = MAX_RECORD_BYTES) -> tuple[list[dict], list[int] | None]:
    """Records of a ``.json``/``.jsonl`` file (optionally gzipped) and their line numbers (``None`` for a JSON
    array); see the module docstring."""
    return _collect(iter_json(path, max_record_bytes))


def read_json_file(path: Path, max_record_bytes: int = MAX_RECORD_BYTES) -> list[dict]:
    """Records of a ``.json``/``.jsonl`` file (optionally gzipped); see the module docstring."""
    return read_json_lines(path, max_record_bytes)[0]


def read_parquet(path: Path) -> list[dict]:
    return [r for r, _ in tables.iter_parquet(Path(path), streaming=False)]


def read_hub(name: str, split: str = "train") -> list[dict]:
    """``datasets.load_dataset(name[, config], split=split)`` as a list of dicts; ``name`` may be ``"name:config"``."""
    return [r for r, _ in tables.iter_hub(name, split, streaming=False)]


def read_records_with_lines(
    source: str, split: str = "train", max_record_bytes: int = MAX_RECORD_BYTES
) -> tuple[list[dict], list[int] | None]:
    """:func:`read_records` plus the 1-based line of each record (``None`` when rows are not lines)."""
    return _collect(iter_records(source, split, max_record_bytes))


def read_records(source: str, split: str = "train", max_record_bytes: int = MAX_RECORD_BYTES) -> list[dict]:
    """All records of ``source`` as a list (prefer :func:`iter_records` for large sources)."""
    return read_records_with_lines(source, split, max_record_bytes)[0]
