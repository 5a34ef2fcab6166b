"""Regularizers for multi-stage alignment: HBAT's modified EWC, freezing, Fisher EWC, distance-to-anchor penalties.

Every class implements :class:`~tandem.regularizers.base.Regularizer`: ``before_stage(model, stage)``,
``grad_term(model)`` (adds to ``.grad`` in place with fused ``torch._foreach_*`` ops), ``after_stage(model,
stage, data: StageData)``, ``last_penalty``, ``report()``, ``state_dict()`` / ``load_state_dict()``; plus
``penalty(model)`` for logging. Built by name with :func:`build` (names in ``registry.py``).
"""

from tandem.regularizers.anchor import Anchor
from tandem.regularizers.base import NO_DATA, Regularizer, StageData, StageInfo
from tandem.regularizers.ewc import ModifiedEWC, importance, recompute_importance, tensor_change
from tandem.regularizers.fisher import FisherEWC
from tandem.regularizers.freeze import Freeze
from tandem.regularizers.registry import aliases, build, names

__all__ = [
    "NO_DATA",
    "Anchor",
    "FisherEWC",
    "Freeze",
    "ModifiedEWC",
    "Regularizer",
    "StageData",
    "StageInfo",
    "aliases",
    "build",
    "importance",
    "names",
    "recompute_importance",
    "tensor_change",
]
