"""``build(name, **kwargs)``: a regularizer from its recipe block (``regularizer: {name: ..., ...}``).

Names (``-`` and ``_`` are interchangeable): ``modified_ewc`` (HBAT, alias ``hbat_ewc``), ``sequential_ewc``
(``modified_ewc`` with ``mode="sequential"``), ``fisher_ewc``, ``freeze`` (alias ``hbat_freeze``),
``l2_anchor``, ``l1_anchor``. Unknown keyword arguments raise ``TypeError`` naming the regularizer.
"""

from __future__ import annotations

import inspect

from tandem.regularizers.anchor import Anchor
from tandem.regularizers.ewc import ModifiedEWC
from tandem.regularizers.fisher import FisherEWC
from tandem.regularizers.freeze import Freeze

REGISTRY = {
    "modified_ewc": (ModifiedEWC, {}),
    "hbat_ewc": (ModifiedEWC, {}),
    "sequential_ewc": (ModifiedEWC, {"mode": "sequential"}),
    "fisher_ewc": (FisherEWC, {}),
    "freeze": (Freeze, {}),
    "hbat_freeze": (Freeze, {}),
    "l2_anchor": (Anchor, {"norm": "l2"}),
    "l1_anchor": (Anchor, {"norm": "l1"}),
}


def names() -> list[str]:
    return sorted(REGISTRY)


def build(name: str, **kwargs):
    key = str(name).strip().lower().replace("-", "_")
    if key not in REGISTRY:
        raise ValueError(f"regularizer.name: unknown regularizer {name!r}; known: {names()}")
    cls, fixed = REGISTRY[key]
    allowed = set(inspect.signature(cls).parameters) - set(fixed)
    bad = sorted(set(kwargs) - allowed)
    if bad:
        raise TypeError(f"regularizer {name!r}: unknown argument(s) {bad}; allowed: {sorted(allowed)}")
    return cls(**fixed, **kwargs)
