"""Tabular and Hub sources through ``datasets``: CSV/TSV, Parquet, ``save_to_disk`` directories, Hub names.

Rows come out one at a time as plain dicts. A cell that is ``null`` is left out of its row (Arrow gives every
row every column, so a missing field and a null one read the same: "absent").

CSV/TSV: before ``datasets.load_dataset("csv", ...)`` reads the file, a cheap streaming pre-pass with
Python's ``csv`` module (over :func:`tandem.data.lines.iter_lines`) checks every physical line for UTF-8 and
the per-line size cap and every record for its number of fields, naming the file and the line (pandas would
otherwise misread a row with one field too many as an index, or report a UTF-8 error by byte offset). The
pre-pass also gives each row its first line, so later errors name it. Every CSV cell is read as a string,
exactly as written (an empty cell is ``""``, ``0042`` stays ``0042``).
"""

from __future__ import annotations

import array
import csv
from collections.abc import Iterator
from pathlib import Path

from tandem.data.errors import DataError
from tandem.data.lines import iter_lines

CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz")


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
        e = e.__cause__ or e.__context__
    return f"{type(e).__name__}: {str(e).strip()}"


def _rows(ds, where: str, lines=None) -> Iterator[tuple[dict, int | None]]:
    try:
        for i, r in enumerate(ds):
            yield {k: v for k, v in dict(r).items() if v is not None}, (lines[i] if lines is not None and i < len(lines) else None)
    except DataError:
        raise
    except Exception as e:  # datasets/pyarrow/pandas raise many types while reading
        raise DataError(f"{where}: cannot read ({_root_cause(e)})") from None


def _csv_prepass(path: Path, cap: int, delimiter: str) -> tuple[list[str], array.array]:
    """Header and the first line of each record; :class:`DataError` naming the line for bad bytes, an
    over-long line or a record with the wrong number of fields."""
    starts = array.array("q")
    pending: list[int] = []

    def lines():
        for lineno, text in iter_lines(path, cap):
            pending.append(lineno)
            yield text

    reader = csv.reader(lines(), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    try:
        for fields in reader:
            first = pending[0] if pending else reader.line_num
            pending.clear()
            if not fields:
                continue  # blank line (pandas skips them too)
            if header is None:
                header = fields
                if len(set(header)) != len(header):
                    dup = sorted({h for h in header if header.count(h) > 1})
                    raise DataError(f"{path}:{first}: the header names column(s) {dup} twice")
                continue
            if len(fields) != len(header):
                raise DataError(f"{path}:{first}: {len(fields)} fields, but the header has {len(header)} "
                                f"({', '.join(header)}); quote fields that contain '{delimiter}'")
            starts.append(first)
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    if header is None:
        raise DataError(f"{path}: empty CSV file (no header line)")
    return header, starts


def iter_csv(path: Path, max_record_bytes: int, streaming: bool = False) -> Iterator[tuple[dict, int | None]]:
    """Rows of a CSV/TSV file (optionally gzipped), every cell a string; see the module docstring."""
    import datasets

    delimiter = "\t" if path.name.lower().endswith((".tsv", ".tsv.gz")) else ","
    header, starts = _csv_prepass(path, max_record_bytes, delimiter)
    features = datasets.Features({c: datasets.Value("string") for c in header})
    try:
        ds = datasets.load_dataset("csv", data_files=str(path), split="train", streaming=streaming, sep=delimiter,
                                   features=features, na_filter=False, index_col=False)
    except Exception as e:
        raise DataError(f"{path}: cannot read CSV ({_root_cause(e)})") from None
    return _rows(ds, str(path), starts)


def iter_parquet(path: Path, streaming: bool = False) -> Iterator[tuple[dict, int | None]]:
    import datasets

    try:
        ds = datasets.load_dataset("parquet", data_files=str(path), split="train", streaming=streaming)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: cannot read parquet ({_root_cause(e)})") from None
    return _rows(ds, str(path))


def _pick_split(ds, split: str, name: str):
    from datasets import DatasetDict, IterableDatasetDict

    if isinstance(ds, (DatasetDict, IterableDatasetDict)):
        if split not in ds:
            raise DataError(f"{name}: no split '{split}' (available: {', '.join(ds.keys())})")
        return ds[split]
    return ds


def iter_saved(path: Path, split: str = "train") -> Iterator[tuple[dict, int | None]]:
    """Rows of a directory written by ``datasets``' ``save_to_disk``."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise DataError(f"{path}: a directory, but not one written by datasets' save_to_disk ({e})") from None
    return _rows(_pick_split(ds, split, str(path)), str(path))


def iter_hub(name: str, split: str = "train", streaming: bool = False) -> Iterator[tuple[dict, int | None]]:
    """Rows of ``datasets.load_dataset(name[, config], split=split)``; ``name`` may be ``"name:config"``."""
    import datasets

    repo, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(repo, config or None, split=split, streaming=streaming)
    except Exception as e:  # network, missing dataset, bad config: all reported the same way
        raise DataError(
            f"{name}: not a local file and could not be loaded as a Hugging Face dataset "
            f"(split '{split}'): {type(e).__name__}: {e}"
        ) from None
    return _rows(_pick_split(ds, split, name), name)
