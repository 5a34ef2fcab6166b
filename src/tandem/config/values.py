"""Value checks shared by the recipe's blocks (tandem.config.recipe attaches them as pydantic validators)."""

from __future__ import annotations

import math
import os
from typing import Any


def finite_numbers(v: dict[str, Any]) -> dict[str, Any]:
    """A block of free keyword arguments (objective, regularizer): a NaN or an infinity is refused by name, and a
    ``percent`` must lie in [0, 100]."""
    for k, x in v.items():
        if isinstance(x, float) and not math.isfinite(x):
            raise ValueError(f"{k} must be a finite number, got {x}")
    pct = v.get("percent")
    if pct is not None and (isinstance(pct, bool) or not isinstance(pct, (int, float)) or not 0 <= pct <= 100):
        raise ValueError(f"percent must be a number in [0, 100], got {pct!r}")
    return v


def finite_extras(model):
    """After-validator of a block that allows extra keys (``objectives.<role>``): its extra numbers are finite."""
    finite_numbers(dict(model.model_extra or {}))
    return model


def number_arguments(where: str, ctor, kwargs: dict[str, Any]) -> None:
    """Arguments whose default in ``ctor`` is a number must be numbers: ``beta: abc`` is refused naming the field
    (not ``'>' not supported between 'str' and 'int'`` from inside the objective)."""
    import inspect

    if ctor is None:
        return
    params = inspect.signature(ctor).parameters
    for k, v in kwargs.items():
        default = params[k].default if k in params else None
        if isinstance(default, (int, float)) and not isinstance(default, bool) and isinstance(v, (str, bool)):
            raise ValueError(f"{where}.{k}: {v!r} is not a number (default {default}); give a number")


def not_bool(v: Any) -> Any:
    """Before-validator of an integer field: ``seed: true`` is refused (YAML's booleans are ints to pydantic)."""
    if isinstance(v, bool):
        raise ValueError(f"must be an integer, got {v} (a boolean)")
    return v


def expand_path(v: str) -> str:
    """``~`` and ``$HOME`` of an output path expanded (never a literal ``~`` directory)."""
    return os.path.expandvars(os.path.expanduser(v))


def redact_flag(flag: str) -> str:
    """A ``--set key=value`` flag as an error line may echo it: a key in ``*api_key_env`` or a URL password hidden."""
    from tandem.io.secrets import redact_value

    key, sep, value = flag.partition("=")
    return f"{key}{sep}{redact_value(key.strip(), value)}" if sep else flag


__all__ = ["expand_path", "finite_extras", "finite_numbers", "not_bool", "number_arguments", "redact_flag"]
