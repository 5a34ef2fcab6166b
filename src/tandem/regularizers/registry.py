"""``build(name, **settings)``: a regularizer by name, with its settings from the recipe.

One table. Its first five names are the keys of the recipe's ``hbat`` block, which ``Method.regularizer`` names
(``hbat.<name>`` holds the settings): ``ewc`` (HBAT's modified EWC), ``freeze``, ``fisher`` (EWC with the
empirical Fisher), ``l2`` and ``l1`` (distance-to-anchor penalties). The older long names are aliases in the same
table: ``modified_ewc`` / ``hbat_ewc`` (= ``ewc``), ``sequential_ewc`` (``ewc`` with ``mode="sequential"``),
``fisher_ewc``, ``hbat_freeze``, ``l2_anchor``, ``l1_anchor``. Names are case-insensitive and ``-`` equals ``_``.
An unknown setting raises ``TypeError`` naming the regularizer and the allowed settings.
"""

from __future__ import annotations

import inspect
from typing import Callable, NamedTuple

from tandem.regularizers.anchor import Anchor
from tandem.regularizers.base import Regularizer
from tandem.regularizers.ewc import ModifiedEWC
from tandem.regularizers.fisher import FisherEWC
from tandem.regularizers.freeze import Freeze


class Entry(NamedTuple):
    cls: Callable[..., Regularizer]
    fixed: dict  # settings the name fixes
    alias_of: str | None = None  # the hbat-block name this older name stands for


REGISTRY: dict[str, Entry] = {
    "ewc": Entry(ModifiedEWC, {}),
    "freeze": Entry(Freeze, {}),
    "fisher": Entry(FisherEWC, {}),
    "l2": Entry(Anchor, {"norm": "l2"}),
    "l1": Entry(Anchor, {"norm": "l1"}),
    # older names
    "modified_ewc": Entry(ModifiedEWC, {}, "ewc"),
    "hbat_ewc": Entry(ModifiedEWC, {}, "ewc"),
    "sequential_ewc": Entry(ModifiedEWC, {"mode": "sequential"}, "ewc"),
    "fisher_ewc": Entry(FisherEWC, {}, "fisher"),
    "hbat_freeze": Entry(Freeze, {}, "freeze"),
    "l2_anchor": Entry(Anchor, {"norm": "l2"}, "l2"),
    "l1_anchor": Entry(Anchor, {"norm": "l1"}, "l1"),
}


def names() -> list[str]:
    """The hbat-block names (``ewc``, ``freeze``, ``fisher``, ``l2``, ``l1``)."""
    return [n for n, e in REGISTRY.items() if e.alias_of is None]


def aliases() -> dict[str, str]:
    """``older name -> hbat-block name``."""
    return {n: e.alias_of for n, e in REGISTRY.items() if e.alias_of is not None}


def build(name: str, **settings) -> Regularizer:
    key = str(name).strip().lower().replace("-", "_")
    if key not in REGISTRY:
        raise ValueError(f"regularizer name: unknown regularizer {name!r}; known: {', '.join(names())} "
                         f"(older names: {', '.join(aliases())})")
    entry = REGISTRY[key]
    allowed = set(inspect.signature(entry.cls).parameters) - set(entry.fixed)
    bad = sorted(set(settings) - allowed)
    if bad:
        raise TypeError(f"regularizer {name!r}: unknown argument(s) {bad}; allowed: {sorted(allowed)}")
    return entry.cls(**entry.fixed, **settings)
