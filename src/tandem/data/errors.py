"""The one error type of the data package."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data: the message names the file (or dataset), the line or row, and the field at fault."""
