"""Callables named in a recipe as ``"package.module:function"``."""

from __future__ import annotations

import importlib
from typing import Callable


def resolve_function(spec: str | Callable, what: str = "ppo reward_fn") -> Callable:
    """The callable that ``spec`` (``"package.module:function"``) names, or ``spec`` itself when it is callable.

    ``what`` names the setting in the error messages (e.g. ``"eval.reward_fn"``).
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"{what}: expected 'module:function', got {spec!r}")
    mod, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{what} {spec!r}: {e}") from None
    if not callable(fn):
        raise ValueError(f"{what} {spec!r} is not callable")
    return fn
