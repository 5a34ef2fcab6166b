"""Toy models and stage helpers for the tests of tandem.regularizers."""

from __future__ import annotations

import io

import torch
from torch import nn

from tandem.regularizers import StageInfo


class Toy(nn.Module):
    """Three tensors of different shapes: a [2], b [2, 2], c [3] (c optionally float64)."""

    def __init__(self, c_dtype=torch.float32):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(2))
        self.b = nn.Parameter(torch.zeros(2, 2))
        self.c = nn.Parameter(torch.zeros(3, dtype=c_dtype))

    def set(self, a, b, c):
        with torch.no_grad():
            self.a.copy_(torch.tensor(a, dtype=self.a.dtype))
            self.b.copy_(torch.tensor(b, dtype=self.b.dtype))
            self.c.copy_(torch.tensor(c, dtype=self.c.dtype))


def stages(*kinds):
    return [StageInfo(i, f"{i + 1:02d}-{k}", k) for i, k in enumerate(kinds)]


def weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def grads(model) -> dict[str, torch.Tensor | None]:
    return {n: None if p.grad is None else p.grad.detach().clone() for n, p in model.named_parameters()}


def zero_grads(model):
    for p in model.parameters():
        p.grad = None if not p.requires_grad else torch.zeros_like(p)
