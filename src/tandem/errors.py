"""The common base of tandem's user errors (floor 0: imports nothing from tandem).

A :class:`TandemError` is a mistake in what the user gave tandem -- a recipe, a flag, a file, a directory -- and
its message is the one line that says what is wrong, where, and what to do. The CLI prints it as ``error: ...``
with exit code 2 (``tandem.cli.common.user_errors``); the Python API lets it propagate.
"""

from __future__ import annotations


class TandemError(Exception):
    """A user error: the message is one line naming the file, field or flag at fault and what to do."""


__all__ = ["TandemError"]
