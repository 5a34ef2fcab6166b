"""The error types of the data package."""

from __future__ import annotations

from tandem.errors import TandemError


class DataError(TandemError, ValueError):
    """Bad input data: the message names the file (or dataset), the line or row, and the field at fault."""


class DataFileNotFound(DataError, FileNotFoundError):
    """A data source that names a local file which does not exist: ``data file not found: PATH``."""
