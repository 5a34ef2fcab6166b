"""Read raw records (one ``dict`` per row) from local files or the Hugging Face Hub.

Accepted sources:

* ``*.jsonl`` / ``*.jsonl.gz``: one JSON object per line (blank lines are ignored);
* ``*.json`` / ``*.json.gz``: a JSON array of objects, or JSON Lines despite the name (decided by the first
  non-blank character: ``[`` means an array);
* ``*.parquet``: read with pyarrow;
* a directory written by ``datasets.Dataset.save_to_disk`` (``split`` picks from a ``DatasetDict``);
* anything else is taken as a Hugging Face dataset name, ``"name"`` or ``"name:config"``, loaded with
  ``datasets.load_dataset(name, config, split=split)``.

Malformed JSON and records that are not objects raise :class:`~tandem.data.errors.DataError` naming the file
and the 1-based line number (for JSON arrays: the line of the syntax error, or the 1-based element index).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from tandem.data.errors import DataError

LOCAL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def _check_object(rec, where: str) -> dict:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object per record, got {type(rec).__name__}")
    return rec


def _read_jsonl_lines(lines, path: Path) -> list[dict]:
    out = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
        out.append(_check_object(rec, f"{path}:{lineno}"))
    return out


def read_json_file(path: Path) -> list[dict]:
    """Records of a ``.json``/``.jsonl`` file (optionally gzipped); see the module docstring."""
    try:
        with _open_text(path) as f:
            text = f.read()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if text.lstrip()[:1] == "[" and not path.name.endswith((".jsonl", ".jsonl.gz")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
        return [_check_object(r, f"{path}: element {i}") for i, r in enumerate(data, start=1)]
    return _read_jsonl_lines(text.splitlines(), path)


def read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: cannot read parquet ({e})") from None


def _from_datasets_obj(ds, split: str, name: str) -> list[dict]:
    from datasets import DatasetDict

    if isinstance(ds, DatasetDict):
        if split not in ds:
            raise DataError(f"{name}: no split '{split}' (available: {', '.join(ds.keys())})")
        ds = ds[split]
    return [dict(r) for r in ds]


def read_hub(name: str, split: str = "train") -> list[dict]:
    """``datasets.load_dataset(name[, config], split=split)`` as a list of dicts; ``name`` may be ``"name:config"``."""
    import datasets

    repo, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(repo, config or None, split=split)
    except Exception as e:  # network, missing dataset, bad config: all reported the same way
        raise DataError(
            f"{name}: not a local file and could not be loaded as a Hugging Face dataset "
            f"(split '{split}'): {type(e).__name__}: {e}"
        ) from None
    return _from_datasets_obj(ds, split, name)


def read_records(source: str, split: str = "train") -> list[dict]:
    """All records of ``source`` (a local file, a saved dataset directory, or a Hub dataset name)."""
    path = Path(source).expanduser()
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:
            raise DataError(f"{path}: a directory, but not one written by datasets' save_to_disk ({e})") from None
        return _from_datasets_obj(ds, split, str(path))
    if path.is_file():
        name = path.name.lower()
        if name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
            return read_json_file(path)
        if name.endswith(".parquet"):
            return read_parquet(path)
        raise DataError(f"{path}: unsupported file type (accepted: {', '.join(LOCAL_SUFFIXES)})")
    if source.lower().endswith(LOCAL_SUFFIXES) or source.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{source}: no such file")
    return read_hub(source, split)
