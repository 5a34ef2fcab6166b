"""The base of every recipe block: unknown keys forbidden, values checked on assignment, no NaN/inf."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

SEED_MAX = 2**32 - 1  # numpy's seed range


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
