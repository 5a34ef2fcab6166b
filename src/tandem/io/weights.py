"""Trainable-weight files: the ``requires_grad`` tensors of a model as one safetensors file, written atomically.

Sharded models (FSDP2, ``DTensor`` parameters) are handled too: :func:`trainable_state` gathers one tensor at a
time and keeps the whole tensors on process 0 only (a collective: every process calls it, the others get ``{}``),
:func:`save_trainable` writes on process 0 only, and :func:`load_trainable_file` copies into each process the
slice of every tensor it holds (each process reads the file; no communication).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file
from torch.distributed.tensor import DTensor, distribute_tensor


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_sharded_model(model) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


def trainable_state(model) -> dict[str, torch.Tensor]:
    """``name -> CPU tensor`` of the trainable parameters. For a sharded model every process must call it: each
    tensor is all-gathered in turn and only process 0 keeps it (the others get ``{}``)."""
    out: dict[str, torch.Tensor] = {}
    keep = _rank() == 0
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        t = p.detach().full_tensor() if isinstance(p, DTensor) else p.detach()
        if keep:
            out[n] = t.contiguous().cpu()
    return out


def save_trainable(model, path: Path) -> None:
    """Write the trainable tensors to ``path`` (process 0 writes; for a sharded model every process must call)."""
    if _rank() != 0 and not is_sharded_model(model):
        return
    state = trainable_state(model)
    if _rank() != 0:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, path)


def load_trainable_file(model, file: Path) -> None:
    """Copy the tensors of ``file`` into the model's parameters of the same names (a sharded parameter gets its
    local slice)."""
    path = Path(file)
    params = dict(model.named_parameters())
    with safe_open(str(path), framework="pt") as f:
        names = list(f.keys())
        missing = [n for n in names if n not in params]
        if missing:
            raise RuntimeError(f"{path}: checkpoint has tensors the model lacks, e.g. {missing[:3]}")
        with torch.no_grad():
            for n in names:
                p, t = params[n], f.get_tensor(n)
                if isinstance(p, DTensor):
                    mesh_device = torch.device(p.device_mesh.device_type)
                    shard = distribute_tensor(t.to(device=mesh_device, dtype=p.dtype), p.device_mesh, p.placements,
                                              src_data_rank=None)
                    p.to_local().copy_(shard.to_local())
                else:
                    p.copy_(t)


def nonfinite(tensors: list[torch.Tensor]) -> list[int]:
    """Indices of the tensors holding a NaN or an infinity: one fused max-abs norm per device, one sync each.
    A sharded tensor is judged by this process's slice (combine the answers of all processes for the whole)."""
    tensors = [t.to_local() if isinstance(t, DTensor) else t for t in tensors]
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        if t.numel():
            by_device.setdefault(t.device, []).append(i)
    bad = []
    for idx in by_device.values():
        norms = torch._foreach_norm([tensors[i].detach() for i in idx], float("inf"))
        ok = torch.stack([n.float() for n in norms]).isfinite().tolist()
        bad += [i for i, good in zip(idx, ok) if not good]
    return sorted(bad)
