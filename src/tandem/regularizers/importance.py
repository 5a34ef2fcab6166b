"""HBAT importance: the accumulated per-tensor change ``AC`` of one kind -> ``F_i = F_max * softmax_i(z_i)``.

``z = normalise(AC) / temperature`` with ``normalise`` one of (``N`` tensors; ``M_i`` the mean square of tensor
``i`` at the anchor, i.e. at the end of the latest stage of that kind, recorded by the change tracker):

============  =================================================  ==============================================
``none``      ``AC``                                             the paper's raw softmax (uniform: ``AC ~ 1e-9``)
``scale``     ``AC * scale``                                     the authors' release (``scale=1e20``: one-hot)
``mean``      ``AC / mean(AC)``
``zscore``    ``(AC - mean) / std`` (population std)             bounded by ``sqrt(N - 1)``
``log``       ``log AC``: ``F ∝ AC^(1/T)``                       T=1: ``F`` proportional to the change
``rank``      ``r_i / (N - 1)``, ``r`` the 0-based rank of ``AC``  ``F_max/F_min = e^(1/T)`` whatever the changes
              (ties: mean rank)
``relative``  ``log(AC / M)``: ``F ∝ (AC/M)^(1/T)``              change relative to the tensor's own magnitude
``uniform``   ``F_i = F_max / N`` whatever ``AC``                control: the damping without the importance
``shuffled``  ``zscore``'s ``F``, permuted across the tensors     control: the same spread of ``F`` on the wrong
              (fixed permutation of the names in sorted order)   tensors
============  =================================================  ==============================================

Degenerate inputs give a uniform ``F``: ``mean`` 0, ``std`` 0, every ``AC`` 0 under ``log``/``relative``, ``N = 1``.
Under ``log`` and ``relative`` a tensor that did not change gets ``F_i = 0`` (it is not pulled back at all); a
tensor whose anchor is all zeros (``M_i = 0``) has an infinite relative change when ``AC_i > 0`` (such tensors
share ``F_max``) and 0 when ``AC_i = 0``.

Every normalisation except ``none`` and ``scale`` is scale free: multiplying every ``AC`` by ``c > 0`` (a larger
learning rate) leaves ``F`` unchanged; ``relative`` is also invariant to rescaling one tensor and its change
together (e.g. a LayerNorm weight near 1 against a projection near 0.02). ``log`` and ``relative`` keep the
heavy tail of the changes (a few tensors can take most of ``F_max``), ``rank`` fixes the contrast to ``e^(1/T)``
and ignores how much larger one change is than the next. Which default the evidence supports, and why, is in
docs/methods.md (benchmarks/importance_real.py, benchmarks/ewc_sweep.py).
"""

from __future__ import annotations

import math
import random
from typing import Mapping

NORMALISATIONS = ("none", "mean", "zscore", "scale", "log", "rank", "relative", "uniform", "shuffled")


def _ranks(x: list[float]) -> list[float]:
    """0-based ranks, ties get the mean of their ranks."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    r = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2
        i = j + 1
    return r


def _log_weights(x: list[float], temperature: float) -> list[float]:
    """``x^(1/T)`` normalised to sum 1 (computed as a softmax over ``log x / T``); zeros get 0, infinities share 1."""
    if any(math.isinf(v) for v in x):
        w = [1.0 if math.isinf(v) else 0.0 for v in x]
    elif all(v <= 0 for v in x):
        w = [1.0] * len(x)
    else:
        z = [math.log(v) / temperature if v > 0 else -math.inf for v in x]
        top = max(z)
        w = [math.exp(v - top) for v in z]
    s = sum(w)
    return [v / s for v in w]


def _softmax(z: list[float]) -> list[float]:
    top = max(z)
    e = [math.exp(v - top) for v in z]
    s = sum(e)
    return [v / s for v in e]


def importance(
    ac: Mapping[str, float],
    f_max: float = 1.0,
    normalise: str = "zscore",
    temperature: float = 1.0,
    scale: float = 1e20,
    magnitude: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """``F_i = f_max * softmax_i(normalise(ac)_i / temperature)`` (module docstring). ``magnitude`` (``M_i``, the
    mean square of each tensor at the anchor) is needed by ``relative`` only."""
    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise: {normalise!r} is not one of {list(NORMALISATIONS)}")
    if not temperature > 0:
        raise ValueError(f"temperature: must be > 0, got {temperature}")
    names = list(ac)
    if not names:
        return {}
    x = [float(ac[n]) for n in names]
    n = len(x)
    if normalise == "uniform":
        return {k: f_max / n for k in names}
    if normalise == "shuffled":  # the zscore F, on a fixed permutation of the tensors (seeded: the same on resume)
        f = importance(ac, f_max, "zscore", temperature)
        order = sorted(names)
        perm = list(order)
        random.Random(len(order)).shuffle(perm)
        return {a: f[b] for a, b in zip(order, perm)}
    if normalise in ("log", "relative"):
        if normalise == "relative":
            if magnitude is None:
                raise ValueError("normalise 'relative' needs the tensors' magnitude (mean square at the anchor)")
            missing = [k for k in names if k not in magnitude]
            if missing:
                raise ValueError(f"normalise 'relative': no magnitude for tensor(s) {missing[:5]}")
            m = [float(magnitude[k]) for k in names]
            x = [v / mi if mi > 0 else (0.0 if v == 0 else math.inf) for v, mi in zip(x, m)]
        p = _log_weights(x, temperature)
        return {k: f_max * v for k, v in zip(names, p)}
    if normalise == "none":
        z = x
    elif normalise == "mean":
        mu = sum(x) / n
        z = [v / mu for v in x] if mu > 0 else [0.0] * n
    elif normalise == "zscore":
        mu = sum(x) / n
        sd = math.sqrt(sum((v - mu) ** 2 for v in x) / n)
        z = [(v - mu) / sd for v in x] if sd > 0 else [0.0] * n
    elif normalise == "rank":
        z = [r / (n - 1) for r in _ranks(x)] if n > 1 else [0.0]
    else:
        z = [v * scale for v in x]
    p = _softmax([v / temperature for v in z])
    return {k: f_max * v for k, v in zip(names, p)}
