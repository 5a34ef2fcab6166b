"""What a method implies: the objectives of the roles it trains, when the recipe leaves them out.

``schedule.method: dpo`` with a model and data trains: every role the method's stages (and its auxiliary term)
train gets the default objective of that role (:data:`ROLE_DEFAULTS`) unless the recipe has a block for it; a
method that forces the preference objective (``orpo``, ``simpo``, ``ppo``: ``Method.preference_objective``) gets
that one. A block without ``name`` (``objectives.preference: {beta: 0.2}``, or TRL's ``beta: 0.2``) takes the
same default name. Data-driven: a method added to ``tandem.schedules.methods.METHODS`` gets its defaults from there.
"""

from __future__ import annotations

import copy
from typing import Any

from tandem.schedules.methods import build_stages, get_method

#: the objective of each data role when the recipe names none (``pretrain`` defaults to the LM loss elsewhere).
ROLE_DEFAULTS = {"sft": "sft", "preference": "dpo", "reward": "reward"}


def implied_objectives(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` (not modified) with the objectives its method implies filled in; unknown methods are left to their
    own error."""
    schedule = raw.get("schedule") if isinstance(raw.get("schedule"), dict) else {}
    name = schedule.get("method", "sft")
    objectives = raw.get("objectives")
    if objectives is not None and not isinstance(objectives, dict):
        return raw
    try:
        method, stages = get_method(str(name)), build_stages(str(name), 1)
    except ValueError:
        return raw
    roles = {s.role for s in stages} | ({method.aux_role} if method.aux_role else set())
    out = copy.copy(raw)
    objectives = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (objectives or {}).items()}
    forced = method.preference_objective
    for role in sorted((roles | set(objectives)) & set(ROLE_DEFAULTS)):
        default = (forced or ROLE_DEFAULTS[role]) if role == "preference" else ROLE_DEFAULTS[role]
        block = objectives.get(role)
        if isinstance(block, dict) and "name" not in block:
            block["name"] = default
        elif block is None and not (role == "preference" and forced in objectives):
            objectives[role] = {"name": default}
    out["objectives"] = objectives
    return out


__all__ = ["ROLE_DEFAULTS", "implied_objectives"]
