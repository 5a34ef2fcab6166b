"""Optimizers and gradient scaling for the training loops (below the engine, above nothing but torch).

==============================  ================================================================================
:func:`adamw`                   AdamW for a list of trainable parameters: plain ``torch.optim.AdamW`` (fused)
                                when all are fp32, :class:`MasterAdamW` (fp32 masters) when any is bf16/fp16
:class:`MasterAdamW`            AdamW on fp32 master weights of low-precision parameters (``optim/master.py``)
:func:`trained_values`         the trainable parameters' values as training holds them (fp32 masters of bf16 ones)
:class:`GradScaling`            fp16 loss scaling: scale, unscale before the gradients are read, step, update
==============================  ================================================================================
"""

from __future__ import annotations

import torch

from tandem.optim.kernels import kernel
from tandem.optim.master import MasterAdamW, is_low_precision, trained_values
from tandem.optim.scaling import GradScaling

__all__ = ["GradScaling", "MasterAdamW", "adamw", "is_low_precision", "kernel", "trained_values"]


def adamw(params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
          weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """AdamW over ``params``: fp32 master weights when any of them is bf16/fp16, else torch's AdamW (fused kernels where available)."""
    params = list(params)
    kw = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    if any(is_low_precision(p) for p in params):
        return MasterAdamW(params, **kw)
    return torch.optim.AdamW(params, **kw, **kernel(params))

