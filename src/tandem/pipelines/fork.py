"""A run that branches off another run at one of its checkpoints: ``tandem train RECIPE --fork-from RUN/checkpoints/NAME``
(and ``tandem study ... --fork-from STUDY --fork-at NAME``, each run from the same-named run of another study).

The use: sweep what a later stage does without paying again for the stages before it, and compare the branches on
the very same model: DPO at two learning rates, or on two pair sets, from one SFT stage. The new run directory
starts as a copy of the source run up to the checkpoint (the checkpoint, which must close a stage; the stage directories of
the stages finished by then; the metrics rows written before it), with the new recipe; training then continues from the
checkpoint exactly as ``--resume`` would (:func:`tandem.engine.run.run`).

What the fork cannot check is whether a changed field would have changed the steps before the checkpoint (a new SFT
learning rate with a checkpoint after the SFT stage would); the fields that differ from the source's ``recipe.yaml``
are logged and recorded in ``RUN/forked-from.json``, so the claim is on record. The data of the new recipe is
fingerprinted afresh (a later ``--resume`` checks it).

``NAME`` may be a checkpoint's directory name or ``stageNN-end``: the checkpoint that closed stage ``NN`` (0-based,
as in the checkpoint names), e.g. ``stage00-end`` for the end of a sequential run's SFT stage.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import yaml

from tandem.config.recipe import Recipe, dump_recipe
from tandem.io.checkpoints import checkpoint_problem, read_state, stage_end

log = logging.getLogger("tandem")

__all__ = ["fork_into", "resolve_checkpoint"]


def resolve_checkpoint(run_dir: Path, name: str) -> Path:
    """``run_dir/checkpoints/<name>``, or for ``stageNN-end`` the checkpoint that closed stage ``NN``; ``ValueError``
    naming what is missing or unusable (a checkpoint inside a stage, an incomplete one, a run without a recipe)."""
    root = Path(run_dir) / "checkpoints"
    if name.startswith("stage") and name.endswith("-end") and name[5:-4].isdigit():
        index = int(name[5:-4])
        path = stage_end(root, index)
        if path is None:
            raise ValueError(f"--fork-from {run_dir}: no checkpoint closed stage {index} ({name}) in {root}")
    else:
        path = root / name
        if not path.is_dir():
            raise ValueError(f"--fork-from {path}: no such checkpoint")
    problem = checkpoint_problem(path)
    if problem:
        raise ValueError(f"--fork-from {path}: {problem}")
    state = read_state(path)
    if not state.get("stage_done"):  # mid-stage, the source's stage dir holds that stage's prepared data and end
        raise ValueError(f"--fork-from {path}: step {state['stage_step']} is inside stage {state['stage_index']}; "
                         f"fork at a stage's end (stage{state['stage_index']:02d}-end or an earlier stage's)")
    if not (Path(run_dir) / "recipe.yaml").is_file():
        raise ValueError(f"--fork-from {path}: {run_dir} has no recipe.yaml (not a tandem run)")
    return path


def fork_into(run_dir: Path, checkpoint: Path, recipe: Recipe) -> dict[str, tuple]:
    """Fill the new (empty, already locked) ``run_dir`` from the source run of ``checkpoint`` up to it, with
    ``recipe`` as its recipe; returns the fields that differ from the source's recipe (also logged and recorded)."""
    from tandem.pipelines.resume import diff, record_data

    src = checkpoint.parent.parent
    changes = diff(yaml.safe_load((src / "recipe.yaml").read_text()) or {}, yaml.safe_load(dump_recipe(recipe)))
    state = read_state(checkpoint)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copytree(checkpoint, run_dir / "checkpoints" / checkpoint.name)
    stages = src / "stages"
    if stages.is_dir():  # the finished stages up to the checkpoint's (their directories are NN-role, NN = index + 1)
        (run_dir / "stages").mkdir(exist_ok=True)
        for p in stages.iterdir():
            if p.is_file():
                shutil.copy2(p, run_dir / "stages" / p.name)
            elif p.name[:2].isdigit() and int(p.name[:2]) <= state["stage_index"] + 1:
                shutil.copytree(p, run_dir / "stages" / p.name)
    metrics = src / "metrics.jsonl"
    if metrics.is_file():  # the rows written before the checkpoint (a resume truncates to this offset)
        with open(metrics, "rb") as f:
            (run_dir / "metrics.jsonl").write_bytes(f.read(int(state["metrics_offset"])))
    (run_dir / "recipe.yaml").write_text(dump_recipe(recipe))
    record_data(run_dir, recipe)
    (run_dir / "forked-from.json").write_text(json.dumps(
        {"checkpoint": str(checkpoint), "stage_index": state["stage_index"], "stage_step": state["stage_step"],
         "global_step": state["global_step"], "changes": {k: {"old": o, "new": n} for k, (o, n) in changes.items()}},
        indent=2, default=str))
    listed = "; ".join(f"{k}: {o!r} -> {n!r}" for k, (o, n) in changes.items()) or "none"
    log.info("%s: forked from %s (global step %d); recipe changes: %s", run_dir, checkpoint, state["global_step"], listed)
    return changes
