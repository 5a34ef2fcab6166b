"""Prepacked bf16 weights for decoding on a CPU: the linear layers' weights reordered once into oneDNN's blocked
layout for the length of a ``with``, instead of at every call.

A bf16 ``F.linear`` on a CPU (oneDNN, AMX / avx512_bf16) reorders its weight into the kernel's blocked layout at every
call. Training amortises that over large matrices; decoding does not: a decode step multiplies a few rows by every
weight of the model, so the reorder is a large part of the step. :func:`packed_linears` reorders each ``nn.Linear``
weight once (``torch.ops.mkldnn._reorder_linear_weight``, what inductor's CPU weight prepacking uses) and routes the
layer's forward through ``torch.ops.mkldnn._linear_pointwise`` for decode-sized inputs (at most :data:`MAX_ROWS`
rows) until the ``with`` ends. There the products are bit-identical to ``F.linear``'s (every decode shape of SmolLM2
from 1 to 128 rows: tests/test_generation_speed.py checks shapes like them; the same greedy replies as
``model.generate`` on SmolLM2 in benchmarks/generation.py; gain in docs/benchmarks.md, "Generation").

Only where it pays and is exact: a CPU model, bf16 weights, torch built with oneDNN; fp32 weights are left alone
(their packed product differs in the last bits and was no faster). The packed copies are extra memory (one more copy
of the linear weights, freed when the ``with`` ends); ``TANDEM_PACKED_DECODE=0`` switches it off.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

__all__ = ["MAX_ROWS", "packed_linears", "packing_available"]

#: the packed product is used for inputs of at most this many rows (a decode step: one position per row); larger
#: inputs (a prefill) keep ``F.linear``: there oneDNN picked other kernels for the two layouts, whose bf16 sums
#: differed in the last bit for some shapes (SmolLM2 prefills of 8 x 60 tokens: 24 of 64 greedy replies changed),
#: while every decode shape tested, 1 to 128 rows, was bit-identical (tests/test_generation_speed.py)
MAX_ROWS = 128


def _ops():
    """``(reorder, linear)`` of torch's oneDNN ops, or ``None`` when this build lacks them."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight, torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


def _switched_on_ops():
    """:func:`_ops`, or ``None`` when ``TANDEM_PACKED_DECODE=0`` switches packing off."""
    return _ops() if os.environ.get("TANDEM_PACKED_DECODE", "1") != "0" else None


def packing_available() -> bool:
    """Whether :func:`packed_linears` packs anything on this machine (oneDNN ops present, not switched off)."""
    return _switched_on_ops() is not None


def _packable(module: nn.Module) -> bool:
    """A plain ``nn.Linear`` (not a subclass, no forward already replaced) whose weight and bias are whole (not FSDP
    shards) bf16 tensors on the CPU."""
    if type(module) is not nn.Linear or "forward" in module.__dict__:
        return False
    return all(type(t.data) is torch.Tensor and t.device.type == "cpu" and t.dtype == torch.bfloat16  # not a DTensor shard
               for t in (module.weight, module.bias) if t is not None)


@contextmanager
def packed_linears(model: nn.Module) -> Iterator[int]:
    """Within the ``with``, every bf16 CPU ``nn.Linear`` of ``model`` computes with a packed copy of its weight
    (module docstring); yields how many layers were packed (0 when nothing applies). The weights must not change
    inside the ``with`` (decoding runs under ``torch.no_grad``)."""
    ops = _switched_on_ops()
    layers = [m for m in model.modules() if ops is not None and _packable(m)]
    if not layers:
        yield 0
        return
    reorder, linear = ops
    try:
        for m in layers:
            packed, bias = reorder(m.weight.detach(), None), m.bias

            def forward(x, _w=packed, _b=bias, _m=m):
                if x.dtype != torch.bfloat16 or x.numel() > MAX_ROWS * x.shape[-1]:  # F.linear's own product
                    return nn.functional.linear(x, _m.weight, _m.bias)
                return linear(x.contiguous(), _w, _b, "none", [], "")

            m.forward = forward
        yield len(layers)
    finally:
        for m in layers:
            m.__dict__.pop("forward", None)
