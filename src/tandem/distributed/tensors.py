"""Whole-tensor arithmetic on sharded (DTensor) parameters without gathering them.

Under FSDP2 every parameter is a ``DTensor`` whose process holds one slice (``to_local()``). A regularizer works
on the local slices only: elementwise terms (``theta - theta^o``, the penalty gradient) are local, and per-tensor
reductions (the change ``C_i``, a norm, a penalty) are a local sum followed by **one** ``all_reduce`` of the vector
of per-tensor sums over the processes that hold the shards (:func:`whole_sums`). The full tensor is never built.

For a plain tensor (no sharding, DDP or one process) every function here is the identity and communicates nothing.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor


def is_dtensor(t) -> bool:
    return isinstance(t, DTensor)


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model``'s parameters are sharded (DTensors: ``tandem.distributed.shard_model`` was applied)."""
    return isinstance(next(iter(model.parameters()), None), DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """The slice of ``t`` this process holds (``t`` itself when it is not sharded); in-place ops on it change ``t``."""
    return t.to_local() if isinstance(t, DTensor) else t


def _shard_groups(t: DTensor) -> tuple:
    """``(mesh, mesh dims along which t is sharded)``; replicated dims hold copies and are not summed over."""
    dims = tuple(d for d, pl in enumerate(t.placements) if pl.is_shard())
    return t.device_mesh, dims


def whole_sums(tensors: Sequence[torch.Tensor], sums: torch.Tensor) -> torch.Tensor:
    """``sums[i]`` is a sum over the local slice of ``tensors[i]``; returns the sums over the whole tensors.

    The entries of sharded tensors are all-reduced (SUM) over the mesh dimensions along which they are sharded,
    one collective per (mesh, dims) group, i.e. one for an FSDP2 model. Entries of plain tensors are unchanged.
    Every process must call it with the same tensors in the same order (it is a collective when any is sharded).
    """
    groups: dict[tuple, tuple] = {}
    for i, t in enumerate(tensors):
        if isinstance(t, DTensor):
            mesh, dims = _shard_groups(t)
            if dims:
                groups.setdefault((id(mesh), dims), (mesh, dims, []))[2].append(i)
    if not groups:
        return sums
    out = sums.clone()
    for mesh, dims, idx in groups.values():
        index = torch.tensor(idx, device=sums.device)
        part = sums.index_select(0, index).to(mesh.device_type)
        for d in dims:
            dist.all_reduce(part, op=dist.ReduceOp.SUM, group=mesh.get_group(d))
        out.index_copy_(0, index, part.to(sums.device))
    return out


def sharded(tensors: Sequence[torch.Tensor]) -> bool:
    return any(isinstance(t, DTensor) for t in tensors)


def all_true(flag: bool, device: torch.device | str = "cpu") -> bool:
    """``flag`` and-ed over every process (the same answer everywhere); ``flag`` without a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return bool(flag)
    t = torch.tensor([0.0 if flag else 1.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t) == 0.0


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
