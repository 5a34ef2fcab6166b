"""Atomic checkpoints: enough state that a resumed run ends with the same weights as an uninterrupted one.

A checkpoint directory holds the trainable tensors (safetensors), optimizer and LR-scheduler state, RNG
states, regularizer state and ``state.json`` (stage, step, metrics offset). It is written into a temporary
directory and renamed into place, so a crash never leaves a half-written checkpoint behind. A checkpoint is
never written from non-finite weights (:func:`assert_finite`): the run stops with ``TrainingDiverged`` naming the
last finite checkpoint on disk, which ``--resume`` continues from.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tandem.engine.loop import TrainingDiverged
from tandem.io.weights import load_trainable_file, nonfinite, trainable_state
from tandem.models.atomic import atomic_dir


def last_finite_checkpoint(ckpt_root: Path | None) -> Path | None:
    """The newest checkpoint in ``ckpt_root`` whose weights are all finite (None when there is none)."""
    for path in reversed(list_checkpoints(ckpt_root) if ckpt_root is not None else []):
        weights = path / "trainable.safetensors"  # a sharded checkpoint was checked when it was written
        if not weights.exists() or not nonfinite(list(load_file(str(weights)).values())):
            return path
    return None


def assert_finite(model, what: str, ckpt_root: Path | None = None) -> None:
    """Raise ``TrainingDiverged`` (nothing written) when a trainable tensor of ``model`` is not finite; the
    message names ``what`` was not written and the last finite checkpoint in ``ckpt_root`` (or that none exists)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    bad = [named[i][0] for i in nonfinite([p for _, p in named])]
    if not bad:
        return
    last = last_finite_checkpoint(ckpt_root)
    todo = (f"the last finite checkpoint is {last} (global step {read_state(last)['global_step']}): --resume continues "
            "from it with the same recipe; or lower the learning rate and start again with --overwrite" if last else
            "no finite checkpoint exists: lower the learning rate or check the data and start again with --overwrite")
    raise TrainingDiverged(f"non-finite weights in {len(bad)} of {len(named)} trainable tensors (e.g. "
                           f"{', '.join(bad[:3])}): {what} was not written; {todo}")


def save_checkpoint(ckpt_root: Path, model, optimizer, scheduler, regularizer, state: dict, keep: int) -> Path:
    name = f"stage{state['stage_index']:02d}-step{state['global_step']:06d}"
    path = Path(ckpt_root) / name
    assert_finite(model, f"checkpoint {name}", ckpt_root)
    with atomic_dir(path) as tmp:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if regularizer is not None:
            torch.save(regularizer.state_dict(), tmp / "regularizer.pt")
        torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
        (tmp / "python_rng.json").write_text(json.dumps(random.getstate()[1]))
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
    _prune(Path(ckpt_root), keep)
    return path


def _prune(root: Path, keep: int) -> None:
    ckpts = list_checkpoints(root)
    for old in ckpts[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(root: Path) -> list[Path]:
    root = Path(root)
    if not root.exists():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and (p / "state.json").exists()]
    return sorted(found, key=lambda p: json.loads((p / "state.json").read_text())["global_step"])


def load_trainable(model, path: Path) -> None:
    load_trainable_file(model, Path(path) / "trainable.safetensors")


def load_optim(path: Path, optimizer, scheduler, regularizer) -> None:
    path = Path(path)
    if optimizer is not None and (path / "optimizer.pt").exists():
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    if scheduler is not None and (path / "scheduler.pt").exists():
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    if regularizer is not None and (path / "regularizer.pt").exists():
        regularizer.load_state_dict(torch.load(path / "regularizer.pt", weights_only=True))


def load_rng(path: Path) -> None:
    path = Path(path)
    torch.set_rng_state(torch.load(path / "rng.pt", weights_only=True)["torch"])
    internal = tuple(json.loads((path / "python_rng.json").read_text()))
    random.setstate((3, internal, None))


def read_state(path: Path) -> dict:
    return json.loads((Path(path) / "state.json").read_text())
