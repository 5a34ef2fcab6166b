"""Objectives: each is a loss over a batch (see docs/architecture.md). Registry in registry.py."""

from tandem.objectives.logprobs import sequence_logps, token_logps
from tandem.objectives.registry import OBJECTIVES, build

__all__ = ["OBJECTIVES", "build", "sequence_logps", "token_logps"]
