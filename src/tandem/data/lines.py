"""Line-level reading of text data files, with the guards every reader shares.

:func:`iter_lines` yields ``(line_number, text)`` one line at a time from a plain or gzipped file: each line is
read with a size cap (a line over the cap is refused before it is read whole, so one huge line cannot exhaust
memory) and decoded as strict UTF-8 (a BOM at the start is accepted); both errors name the file and the
1-based line. It never holds more than one line, so it is also the cheap pre-pass of the CSV reader.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

from tandem.data.errors import DataError

MAX_RECORD_BYTES = 10 * 2**20


def open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def decode(raw: bytes, where: str, first: bool) -> str:
    """``raw`` as UTF-8 (``utf-8-sig`` for the first line), else :class:`DataError` naming ``where`` and the byte."""
    try:
        return raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{where}: not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1}); convert the file to UTF-8"
        ) from None


def over_cap_message(where: str, cap: int) -> str:
    return (f"{where}: record is over the size cap of {mib(cap)} per line; split it, or raise the cap "
            "(data.max_record_mb in the recipe)")


def iter_lines(path: Path, cap: int = MAX_RECORD_BYTES) -> Iterator[tuple[int, str]]:
    """``(1-based line number, decoded text)`` of every line of ``path`` (optionally gzipped), newline included."""
    try:
        with open_binary(path) as f:
            lineno = 0
            while True:
                raw = f.readline(cap + 1)
                if not raw:
                    return
                lineno += 1
                where = f"{path}:{lineno}"
                if len(raw) > cap and not (len(raw) == cap + 1 and raw.endswith(b"\n")):
                    raise DataError(over_cap_message(where, cap))
                yield lineno, decode(raw, where, first=lineno == 1)
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
