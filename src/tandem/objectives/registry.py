"""Objective registry: recipe name -> constructor. Adding a loss = one file + one line here."""

from __future__ import annotations

import inspect

from tandem.objectives.dpo import DPO
from tandem.objectives.reward import Reward
from tandem.objectives.sft import SFT

OBJECTIVES: dict[str, type] = {
    "sft": SFT,
    "reward": Reward,
    "dpo": DPO,
}


def build(name: str, **kwargs):
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {', '.join(sorted(OBJECTIVES))}")
    cls = OBJECTIVES[name]
    params = inspect.signature(cls).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        bad = [k for k in kwargs if k not in params]
        if bad:
            raise TypeError(f"unknown argument(s) {bad} for objective {name!r}; accepted: {sorted(params)}")
    return cls(**kwargs)
