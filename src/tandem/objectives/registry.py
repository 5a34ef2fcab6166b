"""Objective registry: recipe name -> constructor taking the recipe block's keys as keyword arguments.

Adding a loss = its own file + one line in ``OBJECTIVES``. Every offline objective satisfies
:class:`tandem.objectives.base.Objective` (``data_kind``, ``unit``, ``prepare``, ``__call__``). ``ppo`` is the
online objective's settings and maths, run by the engine's PPO loop, not an ``Objective``.
"""

from __future__ import annotations

import inspect
from typing import Callable

from tandem.objectives.dpo import DPO
from tandem.objectives.dpop import DPOP
from tandem.objectives.grpo import GRPO
from tandem.objectives.kto import KTO
from tandem.objectives.normalized import Normalized
from tandem.objectives.orpo import ORPO
from tandem.objectives.ppo import PPO
from tandem.objectives.reward import Reward
from tandem.objectives.rloo import RLOO
from tandem.objectives.sft import SFT
from tandem.objectives.simpo import SimPO
from tandem.objectives.sparse_token import SparseToken

OBJECTIVES: dict[str, Callable] = {  # listed in this order in error messages
    # preference objectives of the policy
    "dpo": DPO,  # loss_type (dpo_losses.LOSSES), beta, label_smoothing, nll_coef, average_logps
    "dpop": DPOP,  # beta, lam: DPO-Positive (arXiv 2402.13228)
    "kto": KTO,  # beta, desirable_weight, undesirable_weight: unpaired prompt/completion/label rows (arXiv 2402.01306)
    "normalized": Normalized,  # beta (None: no sigmoid weight, no reference), rescale ("none"|"norm"|"dpo"), eps
    "orpo": ORPO,  # lam, nll_on ("response" | "prompt_response", TRL's): SFT NLL + odds-ratio term, reference-free (arXiv 2403.07691)
    "simpo": SimPO,  # beta, gamma: length-normalised, reference-free, target margin (arXiv 2405.14734)
    "sparse_token": SparseToken,  # beta, shared_weight
    "ppo": PPO,  # online: reward_model | reward_fn, critic, beta, kl_control, gamma, lam, clip, ... (engine's PPO loop)
    "grpo": GRPO,  # online: reward_funcs, num_generations, scale_rewards, loss_type, epsilon, beta, ... (group loop)
    "rloo": RLOO,  # online: reward_funcs, num_generations, leave-one-out baseline, beta, kl_in_reward (group loop)
    # reward model, supervised fine-tuning
    "reward": Reward,
    "sft": SFT,
}


def build(name: str, **kwargs):
    """The objective registered as ``name``, built with ``kwargs``; clear errors for unknown names or keys."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")
    ctor = OBJECTIVES[name]
    params = inspect.signature(ctor).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        bad = sorted(k for k in kwargs if k not in params)
        if bad:
            accepted = ", ".join(sorted(params)) or "none"
            raise TypeError(f"unknown argument(s) {bad} for objective {name!r}; accepted: {accepted}")
    return ctor(**kwargs)
