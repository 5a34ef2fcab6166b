"""Checkpoint files on disk: the manifest, finding the newest usable checkpoint, reading its state.

Manifest
    ``manifest.json`` lists every file of a checkpoint with its size and SHA-256; it is written last (after every
    other file, before the atomic rename), so a checkpoint with a matching manifest is complete.
    :func:`checkpoint_problem` says what is wrong with one (no manifest, a file missing, truncated or changed,
    ``state.json`` unreadable, non-finite trainable weights); :func:`newest_usable` skips such checkpoints in favour
    of the newest complete and finite one, and says which it skipped and why.

A sharded checkpoint (``sharded.json``, written by :mod:`tandem.distributed.checkpoint`) has no manifest: it is
checked for a readable ``state.json`` only.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import torch

from tandem.errors import TandemError
from tandem.io.fingerprint import file_digest

MANIFEST = "manifest.json"
SHARDED = "sharded.json"
_NAME = re.compile(r"^stage(\d+)-step(\d+)$")


class CheckpointError(TandemError):
    """A checkpoint that cannot be resumed (one line naming it and what is wrong)."""


def write_manifest(path: str | Path) -> Path:
    """Write ``path/manifest.json`` (every other file under ``path``: size and SHA-256). Call it last."""
    path = Path(path)
    files = {}
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != MANIFEST):
        files[f.relative_to(path).as_posix()] = {"bytes": f.stat().st_size, "sha256": file_digest(f)}
    out = path / MANIFEST
    out.write_text(json.dumps({"files": files}, indent=1) + "\n", encoding="utf-8")
    return out


def _step_of(path: Path) -> int:
    m = _NAME.match(path.name)
    return int(m.group(2)) if m else -1


def list_checkpoints(root: str | Path | None) -> list[Path]:
    """Checkpoint directories of ``root`` (``stageNN-stepNNNNNN`` holding a ``state.json``), oldest first (by the
    global step in the name, so a garbled ``state.json`` cannot break the order)."""
    if root is None or not Path(root).is_dir():
        return []
    found = [p for p in Path(root).iterdir() if p.is_dir() and (p / "state.json").exists() and _step_of(p) >= 0]
    return sorted(found, key=lambda p: (_step_of(p), p.name))


def read_state(path: str | Path) -> dict:
    try:
        state = json.loads((Path(path) / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: state.json is unreadable ({e}); resume from an earlier checkpoint") from None
    if not isinstance(state, dict) or not {"stage_index", "global_step", "stage_done"} <= set(state):
        raise CheckpointError(f"{path}: state.json is not a checkpoint state; resume from an earlier checkpoint")
    return state


def stage_end(root: str | Path, index: int) -> Path | None:
    """The checkpoint under ``root`` that closed stage ``index`` (``stage_done``), or ``None``."""
    for c in sorted(Path(root).glob("*/state.json")):
        st = json.loads(c.read_text())
        if st.get("stage_index") == index and st.get("stage_done"):
            return c.parent
    return None


def checkpoint_problem(path: str | Path, check_finite: bool = True) -> str | None:
    """What makes the checkpoint at ``path`` unusable (``None`` when it is complete and finite)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from tandem.io.weights import nonfinite

    path = Path(path)
    if (path / SHARDED).exists():
        try:
            read_state(path)
        except CheckpointError:
            return "state.json is unreadable"
        return None
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:
        return f"no {MANIFEST} (written by an interrupted save or an older tandem)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST} is unreadable"
    for name, meta in manifest.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != meta.get("bytes"):
            return f"{name} has {f.stat().st_size} bytes, {meta.get('bytes')} were written"
        if file_digest(f) != meta.get("sha256"):
            return f"{name} changed since it was written (SHA-256 differs)"
    try:
        read_state(path)
    except CheckpointError:
        return "state.json is unreadable"
    weights = path / "trainable.safetensors"
    if check_finite and weights.exists():
        try:
            if nonfinite(list(load_file(str(weights)).values())):
                return "its trainable weights hold NaN or infinity"
        except (SafetensorError, OSError) as e:
            return f"trainable.safetensors is unreadable ({e})"
    return None


def newest_usable(root: str | Path | None) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(the newest complete and finite checkpoint of ``root`` or None, [(skipped newer checkpoint, why)])."""
    skipped = []
    for path in reversed(list_checkpoints(root)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def skipped_line(skipped: list[tuple[Path, str]], used: Path | None) -> str:
    """The one line that says which checkpoints were skipped and where the run continues from."""
    what = "; ".join(f"{p.name}: {why}" for p, why in skipped)
    where = f"resuming from {used.name} instead" if used is not None else "no complete checkpoint left: starting from the beginning"
    return f"skipped incomplete or corrupt checkpoint(s) ({what}): {where}"


def load_optim(path: str | Path, optimizer, scheduler, regularizer) -> None:
    """Load the optimizer, scheduler and regularizer state of a checkpoint; a missing file is an error (a resume
    with fresh optimizer state would silently differ from the uninterrupted run)."""
    path = Path(path)
    for obj, name in ((optimizer, "optimizer.pt"), (scheduler, "scheduler.pt"), (regularizer, "regularizer.pt")):
        if obj is None:
            continue
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: {name} is missing, so this checkpoint cannot be resumed exactly; resume "
                                  "from an earlier checkpoint (delete this one) or start again with --overwrite")
        obj.load_state_dict(torch.load(path / name, weights_only=True))


def load_rng(path: str | Path) -> None:
    path = Path(path)
    torch.set_rng_state(torch.load(path / "rng.pt", weights_only=True)["torch"])
    internal = tuple(json.loads((path / "python_rng.json").read_text()))
    random.setstate((3, internal, None))


def save_rng(path: str | Path) -> None:
    path = Path(path)
    torch.save({"torch": torch.get_rng_state()}, path / "rng.pt")
    (path / "python_rng.json").write_text(json.dumps(random.getstate()[1]))


__all__ = ["MANIFEST", "CheckpointError", "checkpoint_problem", "list_checkpoints", "load_optim", "load_rng",
           "newest_usable", "read_state", "save_rng", "skipped_line", "write_manifest"]
