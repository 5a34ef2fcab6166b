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
and the 1-based line number (for JSON arrays: the line of the syntax error, or the 1-based element index), as
do bytes that are not UTF-8 (a UTF-8 BOM at the start is accepted). A JSON Lines record longer than
``max_record_bytes`` (default :data:`MAX_RECORD_BYTES`, 10 MiB) is refused before it is read whole, so one
huge line cannot exhaust memory. A source that looks like a local path (a data-file suffix, a leading
``.``/``/``/``~``, or more than one ``/``) and does not exist raises :class:`DataFileNotFound`
(``data file not found: PATH``) instead of being tried on the Hub.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from tandem.data.errors import DataError, DataFileNotFound

LOCAL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")
MAX_RECORD_BYTES = 10 * 2**20


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")


def _check_object(rec, where: str) -> dict:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object per record, got {type(rec).__name__}")
    return rec


def _decode(raw: bytes, where: str, first: bool) -> str:
    try:
        return raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{where}: not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1}); convert the file to UTF-8"
        ) from None


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _first_char(path: Path) -> bytes:
    """The first non-blank byte of the file (reads only up to it)."""
    with _open_binary(path) as f:
        while chunk := f.read(4096):
            stripped = chunk.lstrip().lstrip(b"\xef\xbb\xbf").lstrip()
            if stripped:
                return stripped[:1]
    return b""


def _read_jsonl(path: Path, cap: int) -> tuple[list[dict], list[int]]:
    """Records and their 1-based line numbers; each line is read with a size cap."""
    out, lines = [], []
    with _open_binary(path) as f:
        lineno = 0
        while True:
            raw = f.readline(cap + 1)
            if not raw:
                break
            lineno += 1
            where = f"{path}:{lineno}"
            if len(raw) > cap and not (len(raw) == cap + 1 and raw.endswith(b"\n")):
                raise DataError(
                    f"{where}: record is over the size cap of {_mib(cap)} per line; split it, or raise the cap "
                    "(data.max_record_mb in the recipe)"
                )
            text = _decode(raw, where, first=lineno == 1)
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
            out.append(_check_object(rec, where))
            lines.append(lineno)
    return out, lines


def _read_json_array(path: Path) -> list[dict]:
    with _open_binary(path) as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte {raw[e.start]:#04x}); convert the file to UTF-8") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
    return [_check_object(r, f"{path}: element {i}") for i, r in enumerate(data, start=1)]


def read_json_lines(path: Path, max_record_bytes: int = MAX_RECORD_BYTES) -> tuple[list[dict], list[int] | None]:
    """Records of a ``.json``/``.jsonl`` file (optionally gzipped) and their line numbers (``None`` for a JSON
    array); see the module docstring."""
    try:
        if _first_char(path) == b"[" and not path.name.endswith((".jsonl", ".jsonl.gz")):
            return _read_json_array(path), None
        return _read_jsonl(path, max_record_bytes)
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None


def read_json_file(path: Path, max_record_bytes: int = MAX_RECORD_BYTES) -> list[dict]:
    """Records of a ``.json``/``.jsonl`` file (optionally gzipped); see the module docstring."""
    return read_json_lines(path, max_record_bytes)[0]


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


def looks_local(source: str) -> bool:
    """True when ``source`` reads as a local path rather than a Hub dataset name (see the module docstring)."""
    return (
        source.lower().endswith(LOCAL_SUFFIXES)
        or source.startswith((".", "/", "~"))
        or source.count("/") > 1
        or "\\" in source
    )


def read_records_with_lines(
    source: str, split: str = "train", max_record_bytes: int = MAX_RECORD_BYTES
) -> tuple[list[dict], list[int] | None]:
    """:func:`read_records` plus the 1-based line of each record (``None`` when rows are not lines)."""
    path = Path(source).expanduser()
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:
            raise DataError(f"{path}: a directory, but not one written by datasets' save_to_disk ({e})") from None
        return _from_datasets_obj(ds, split, str(path)), None
    if path.is_file():
        name = path.name.lower()
        if name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
            return read_json_lines(path, max_record_bytes)
        if name.endswith(".parquet"):
            return read_parquet(path), None
        raise DataError(f"{path}: unsupported file type (accepted: {', '.join(LOCAL_SUFFIXES)})")
    if looks_local(source):
        raise DataFileNotFound(f"data file not found: {source}")
    return read_hub(source, split), None


def read_records(source: str, split: str = "train", max_record_bytes: int = MAX_RECORD_BYTES) -> list[dict]:
    """All records of ``source`` (a local file, a saved dataset directory, or a Hub dataset name)."""
    return read_records_with_lines(source, split, max_record_bytes)[0]
