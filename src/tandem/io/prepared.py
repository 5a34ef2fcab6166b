"""The values an objective's one-off pass adds to each example (``ref_*`` keys: e.g. DPO's reference log-probs),
stored per stage so a resumed run reuses them (``stages/NN/prepared.pt``, ``val-ROLE.pt``, ``ref-initial-*.pt``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def save_prepared(cache: Path, features: list[dict]) -> None:
    """The ``ref_*`` values of ``features`` as float64 tensors (nothing when there are none), written atomically."""
    keys = sorted({k for k in features[0] if k.startswith("ref_")}) if features else []
    if keys:
        tmp = cache.with_suffix(".tmp")
        torch.save({k: torch.tensor([f[k] for f in features], dtype=torch.float64) for k in keys}, tmp)
        os.replace(tmp, cache)


def load_prepared(cache: Path, features: list[dict]) -> list[dict]:
    """``features`` with the stored values added back."""
    extra = torch.load(cache, weights_only=True)
    return [{**f, **{k: v[i].item() for k, v in extra.items()}} for i, f in enumerate(features)]
