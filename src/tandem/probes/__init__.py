"""Probes: measurements of a model that do not train it (gradient entanglement of preference pairs)."""

from tandem.probes.entanglement import conditions, entanglement_stats, select_params, summarize
from tandem.probes.hook import ProbeHook

__all__ = ["ProbeHook", "conditions", "entanglement_stats", "select_params", "summarize"]
