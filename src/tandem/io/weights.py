"""Trainable-weight files: the ``requires_grad`` tensors of a model as one safetensors file, written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_trainable(model, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(trainable_state(model), str(tmp))
    os.replace(tmp, path)


def load_trainable_file(model, file: Path) -> None:
    """Copy the tensors of ``file`` into the model's parameters of the same names."""
    path = Path(file)
    tensors = load_file(str(path))
    params = dict(model.named_parameters())
    missing = [n for n in tensors if n not in params]
    if missing:
        raise RuntimeError(f"{path}: checkpoint has tensors the model lacks, e.g. {missing[:3]}")
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)
