"""Schedules: which stages a method runs, in which order, with which data part and extras."""

from tandem.schedules.methods import METHODS, Method, build_stages, get_method
from tandem.schedules.stages import Stage, alternating, sequential, single

__all__ = ["METHODS", "Method", "Stage", "alternating", "build_stages", "get_method", "sequential", "single"]
