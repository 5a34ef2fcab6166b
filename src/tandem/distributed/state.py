"""Consolidated weights of a sharded model: ``final/`` and anything else ``from_pretrained`` must load.

At sharding time :func:`remember` keeps a *twin* of the model: the same modules (HF model, peft wrapper, LoRA
layers) with every parameter on the ``meta`` device, so it costs no memory. :func:`save_final` gathers the full
state dict onto process 0 (CPU, one tensor at a time: ``get_model_state_dict(full_state_dict=True,
cpu_offload=True)``), materialises the twin on the CPU of process 0 with it and hands the twin to
:func:`tandem.models.save_model`, so a sharded run writes exactly what an unsharded one writes (adapter or full
weights, merged LoRA, model card). Process 0 holds the full model on CPU while it writes (twice the model's size
at peak); the other processes hold nothing extra.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from tandem.distributed.tensors import barrier, is_sharded, rank


@dataclass
class ShardRecord:
    twin: torch.nn.Module  # the unsharded model's structure, parameters on meta
    trainable: tuple[str, ...]  # names with requires_grad when sharding started (freezing may change it later)


_RECORDS: "weakref.WeakKeyDictionary[torch.nn.Module, ShardRecord]" = weakref.WeakKeyDictionary()


def meta_twin(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` whose parameters are empty ``meta`` tensors (buffers are copied; they are small)."""
    memo = {id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            for p in model.parameters()}
    return copy.deepcopy(model, memo)


def remember(model: torch.nn.Module) -> None:
    """Record ``model`` (not yet sharded) so that its sharded self can be saved whole later."""
    trainable = tuple(n for n, p in model.named_parameters() if p.requires_grad)
    _RECORDS[model] = ShardRecord(meta_twin(model), trainable)


def record(model: torch.nn.Module) -> ShardRecord:
    if model not in _RECORDS:
        raise RuntimeError("this sharded model was not prepared by tandem.distributed.shard_model")
    return _RECORDS[model]


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict on process 0 (CPU), ``{}`` elsewhere; every process must call it."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def plain_copy(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The twin of sharded ``model`` on CPU with ``state`` (its full state dict) loaded."""
    twin = record(model).twin
    twin.to_empty(device="cpu")
    twin.load_state_dict(state, strict=False)
    missing = [k for k in twin.state_dict() if k not in state]
    if missing:
        raise RuntimeError(f"consolidated state lacks {missing[:3]}")
    return twin


def save_final(model, tokenizer, out_dir: str | Path, merged: bool = False, **save_kw) -> None:
    """``tandem.models.save_model`` of ``model`` into ``out_dir``, written by process 0. For a sharded model
    every process must call it (the weights are gathered); for an unsharded one only process 0 does anything."""
    from tandem.models import save_model

    if not is_sharded(model):
        if rank() == 0:
            save_model(model, tokenizer, out_dir, merged=merged, **save_kw)
        return
    state = full_state_dict(model)
    if rank() == 0:
        twin = plain_copy(model, state)
        del state
        save_model(twin, tokenizer, out_dir, merged=merged, **save_kw)
        twin.to("meta")  # give the memory back; the twin stays usable for a later save
    barrier()
