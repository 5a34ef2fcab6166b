"""Sharded checkpoints (FSDP2): every process writes its own shards, a resume on the same number of processes
continues exactly.

Layout of ``checkpoints/stageSS-stepNNNNNN/`` for a sharded run (``sharded.json`` marks it)::

    dcp/                      trainable parameters and optimizer state, torch.distributed.checkpoint format
                              (each process writes its shards; DCP could reshard them on load)
    regularizer/rank00000-of-00002.pt   each process's regularizer state (its slices of snapshots and anchors)
    scheduler.pt, rng.pt, python_rng.json, state.json, sharded.json    written by process 0

The directory is built under ``.NAME.tmp-sharded`` and renamed into place by process 0 once every process has
written, so a crash never leaves a half-written checkpoint under a checkpoint's name. Weights are checked to be
finite on every process before anything is written (all processes agree, so none waits for the others forever).
A resume must use the same number of processes (the regularizer's slices are per process): a different number is
refused with a message naming both.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from tandem.distributed.state import record
from tandem.distributed.tensors import all_true, barrier, local, rank, world_size
from tandem.io.weights import nonfinite

MARKER = "sharded.json"
_OPTS = StateDictOptions(strict=False)


class ShardedCheckpointError(ValueError):
    """A sharded checkpoint that cannot be written or resumed (one line: what and what to do)."""


def is_sharded_checkpoint(path: Path) -> bool:
    return (Path(path) / MARKER).exists()


def _model_state(model) -> dict:
    """The sharded state (DTensors) of the parameters that were trainable when sharding started."""
    keep = set(record(model).trainable)
    return {k: v for k, v in get_model_state_dict(model, options=_OPTS).items() if k in keep}


def _reg_file(path: Path, r: int, n: int) -> Path:
    return Path(path) / "regularizer" / f"rank{r:05d}-of-{n:05d}.pt"


def save_sharded(root: Path, model, optimizer, scheduler, regularizer, state: dict, keep: int) -> Path:
    """Write a sharded checkpoint of ``model`` (+ optimizer, scheduler, regularizer, ``state``) under ``root``;
    every process must call it. Returns the checkpoint's path."""
    root = Path(root)
    name = f"stage{state['stage_index']:02d}-step{state['global_step']:06d}"
    path, tmp = root / name, root / f".{name}.tmp-sharded"
    params = [p for _, p in model.named_parameters()]
    dev = local(params[0]).device if params else "cpu"
    if not all_true(not nonfinite(params), device=dev):
        raise ShardedCheckpointError(f"non-finite weights: checkpoint {name} was not written; lower the learning rate "
                                     "or check the data, then continue from the last checkpoint with --resume")
    if rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    sd = {"model": _model_state(model)}
    if optimizer is not None:
        sd["optim"] = get_optimizer_state_dict(model, optimizer, options=_OPTS)
    dcp.save(sd, checkpoint_id=str(tmp / "dcp"))
    if regularizer is not None:
        f = _reg_file(tmp, rank(), world_size())
        f.parent.mkdir(parents=True, exist_ok=True)
        torch.save(regularizer.state_dict(), f)
    if rank() == 0:
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
        (tmp / "python_rng.json").write_text(json.dumps(random.getstate()[1]))
        (tmp / MARKER).write_text(json.dumps({"format": "fsdp2-dcp", "world_size": world_size(),
                                              "optimizer": optimizer is not None}))
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
    barrier()
    if rank() == 0:
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        _prune(root, keep)
    barrier()
    return path


def _prune(root: Path, keep: int) -> None:
    found = [p for p in root.iterdir() if p.is_dir() and (p / "state.json").exists()]
    found.sort(key=lambda p: json.loads((p / "state.json").read_text())["global_step"])
    for old in found[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def _check_world(path: Path) -> dict:
    meta = json.loads((Path(path) / MARKER).read_text())
    if meta["world_size"] != world_size():
        raise ShardedCheckpointError(
            f"{path} was written by {meta['world_size']} processes and this run has {world_size()}: resume with "
            f"--num_processes {meta['world_size']} (the regularizer state is kept per process)")
    return meta


def load_model(path: Path, model, regularizer=None) -> None:
    """Load the checkpoint's trainable parameters into sharded ``model`` and this process's regularizer state
    (every process)."""
    _check_world(path)
    sd = {"model": _model_state(model)}
    dcp.load(sd, checkpoint_id=str(Path(path) / "dcp"))
    set_model_state_dict(model, sd["model"], options=_OPTS)
    load_regularizer(path, regularizer)


def load_regularizer(path: Path, regularizer) -> None:
    """This process's regularizer state (nothing when the run has none)."""
    if regularizer is None:
        return
    _check_world(path)
    f = _reg_file(path, rank(), world_size())
    if not f.exists():
        raise ShardedCheckpointError(f"{path}: no regularizer state for process {rank()} ({f.name}); the checkpoint "
                                     "was written without a regularizer: resume with the recipe that wrote it")
    regularizer.load_state_dict(torch.load(f, weights_only=True))


def load_optimizer(path: Path, model, optimizer, scheduler) -> None:
    """The optimizer's sharded state and the scheduler (every process)."""
    meta = _check_world(path)
    if optimizer is not None and meta["optimizer"]:
        sd = {"optim": get_optimizer_state_dict(model, optimizer, options=_OPTS)}
        dcp.load(sd, checkpoint_id=str(Path(path) / "dcp"))
        set_optimizer_state_dict(model, optimizer, sd["optim"], options=_OPTS)
    if scheduler is not None and (Path(path) / "scheduler.pt").exists():
        scheduler.load_state_dict(torch.load(Path(path) / "scheduler.pt", weights_only=True))
