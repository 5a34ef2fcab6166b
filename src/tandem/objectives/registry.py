"""Objective registry: recipe name -> constructor taking the recipe block's keys as keyword arguments.

Adding a loss = its own file + one line in ``OBJECTIVES``. Every objective has ``data_kind`` ("sft" or
"preference"), ``prepare(model, features, batch_fn) -> features`` and ``__call__(model, batch) -> (loss,
metrics)``.
"""

from __future__ import annotations

import inspect
from typing import Callable

from tandem.objectives.dpo import DPO
from tandem.objectives.normalized import Normalized
from tandem.objectives.ppo import PPO
from tandem.objectives.reward import Reward
from tandem.objectives.sft import SFT
from tandem.objectives.sparse_token import SparseToken

OBJECTIVES: dict[str, Callable] = {
    "sft": SFT,
    "reward": Reward,
    "dpo": DPO,  # loss_type="sigmoid"|"ipo"|"hinge", beta, label_smoothing, nll_coef, average_logps
    "normalized": Normalized,  # beta (None: no sigmoid weight, no reference), rescale, eps
    "sparse_token": SparseToken,  # beta, shared_weight
    "ppo": PPO,  # online: reward_model | reward_fn, critic, beta, kl_control, gamma, lam, clip, ... (drives its stage)
}


def build(name: str, **kwargs):
    """The objective registered as ``name``, built with ``kwargs``; clear errors for unknown names or keys."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {', '.join(sorted(OBJECTIVES))}")
    ctor = OBJECTIVES[name]
    params = inspect.signature(ctor).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        bad = sorted(k for k in kwargs if k not in params)
        if bad:
            accepted = ", ".join(sorted(params)) or "none"
            raise TypeError(f"unknown argument(s) {bad} for objective {name!r}; accepted: {accepted}")
    return ctor(**kwargs)
