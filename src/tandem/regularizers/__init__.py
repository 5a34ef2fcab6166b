"""Regularizers for multi-stage alignment: HBAT's modified EWC, freezing, Fisher EWC, distance-to-start anchors.

Interface (docs/architecture.md): ``before_stage(model, stage)``, ``grad_term(model)`` (adds to ``.grad`` in
place with fused ``torch._foreach_*`` ops), ``after_stage(model, stage)``, ``state_dict()`` /
``load_state_dict()``; plus ``last_penalty`` and ``penalty(model)`` for logging.
"""

from tandem.regularizers.anchor import Anchor
from tandem.regularizers.base import StageInfo
from tandem.regularizers.ewc import ModifiedEWC, importance, recompute_importance, tensor_change
from tandem.regularizers.fisher import FisherEWC
from tandem.regularizers.freeze import Freeze
from tandem.regularizers.registry import build

__all__ = [
    "Anchor",
    "FisherEWC",
    "Freeze",
    "ModifiedEWC",
    "StageInfo",
    "build",
    "importance",
    "recompute_importance",
    "tensor_change",
]
