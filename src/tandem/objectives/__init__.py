"""Objectives: each is a loss over a batch satisfying :class:`tandem.objectives.base.Objective`. Registry in
registry.py."""

from tandem.objectives.base import Objective
from tandem.objectives.logprobs import pair_logps, sequence_logps, token_logps
from tandem.objectives.registry import OBJECTIVES, build

__all__ = ["OBJECTIVES", "Objective", "build", "pair_logps", "sequence_logps", "token_logps"]
