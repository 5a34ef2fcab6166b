"""The conflict benchmark: generated tasks with exact checkers, and preference pairs that conflict with them at a
chosen dose rho (see :mod:`tandem.data.conflict.make` and :mod:`tandem.data.conflict.checks`)."""

from tandem.data.conflict.checks import CheckError, friendly, passes, score, summarise
from tandem.data.conflict.families import FAMILIES, PAIR_FAMILIES
from tandem.data.conflict.make import FILES, SIZES, ConflictError, make, write

__all__ = ["CheckError", "ConflictError", "FAMILIES", "FILES", "PAIR_FAMILIES", "SIZES", "friendly", "make", "passes",
           "score", "summarise", "write"]
