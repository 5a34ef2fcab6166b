"""Atomic checkpoints: enough state that a resumed run ends with the same weights as an uninterrupted one.

A checkpoint directory holds the trainable tensors (safetensors), optimizer and LR-scheduler state, RNG
states, regularizer state, ``state.json`` (stage, step, metrics offset) and, written last, ``manifest.json`` (every
file's size and SHA-256: :mod:`tandem.io.checkpoints`). It is written into a temporary directory and renamed into
place, so a crash never leaves a half-written checkpoint behind; ``--resume`` skips an incomplete or corrupt one in
favour of the newest complete and finite one. A checkpoint is never written from non-finite weights
(:func:`assert_finite`): the run stops with ``TrainingDiverged`` naming the last finite checkpoint on disk.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from tandem.engine.loop import TrainingDiverged
from tandem.io.checkpoints import (  # noqa: F401 - re-exported: the engine's checkpoint API
    list_checkpoints, load_optim, load_rng, newest_usable, read_state, save_rng, skipped_line, write_manifest)
from tandem.io.weights import load_trainable_file, nonfinite, trainable_state
from tandem.models.atomic import atomic_dir


def last_finite_checkpoint(ckpt_root: Path | None) -> Path | None:
    """The newest complete checkpoint in ``ckpt_root`` whose weights are all finite (None when there is none)."""
    return newest_usable(ckpt_root)[0]

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
        save_rng(tmp)
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        write_manifest(tmp)  # last: a checkpoint whose manifest matches is complete
    _prune(Path(ckpt_root), keep)
    return path


def _prune(root: Path, keep: int) -> None:
    ckpts = list_checkpoints(root)
    for old in ckpts[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_trainable(model, path: Path) -> None:
    load_trainable_file(model, Path(path) / "trainable.safetensors")

