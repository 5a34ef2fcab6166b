"""``--resume`` with the recipe the run was started with: a changed recipe is refused, except for fields that are
safe to change mid-run when the user names them (``--allow-change FIELD``); what changed is recorded in
``RUN/resume-changes.jsonl``. The data is checked too: a run records a fingerprint of each data source when it
starts (``RUN/data-fingerprints.json``), and a resume whose data changed is refused, naming the file."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import yaml

from tandem.config.recipe import Recipe, dump_recipe
from tandem.io.rundir import RunDirError

log = logging.getLogger("tandem")

#: fields (or prefixes, ending with '.') that do not change what the finished steps computed
SAFE_CHANGES = ("schedule.max_steps", "schedule.max_steps_per_stage", "model.gradient_checkpointing",
                "model.attn_implementation", "logging.", "checkpoint.every", "checkpoint.keep", "eval.", "tax.", "probe.")
IGNORED = ("output_dir",)  # where the run is, not what it does


def _flat(d, prefix: str = "") -> dict:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def diff(old: dict, new: dict) -> dict[str, tuple]:
    a, b = _flat(old), _flat(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k not in IGNORED}


def is_safe(field: str) -> bool:
    return any(field == s or (s.endswith(".") and field.startswith(s)) for s in SAFE_CHANGES)


def resume_changes(run_dir: Path, recipe: Recipe, allow: list[str]) -> dict[str, tuple]:
    """The fields that differ from ``run_dir/recipe.yaml``; raises ``RunDirError`` unless each is allowed."""
    stored = run_dir / "recipe.yaml"
    if not stored.exists():
        raise RunDirError(f"{run_dir}: no recipe.yaml, so this run cannot be resumed; start it again with --overwrite")
    old = yaml.safe_load(stored.read_text()) or {}
    new = yaml.safe_load(dump_recipe(recipe))
    changes = diff(old, new)
    unsafe = [k for k in allow if not is_safe(k)]
    if unsafe:
        raise RunDirError(f"--allow-change {', '.join(unsafe)}: not a field that is safe to change mid-run "
                          f"(safe: {', '.join(SAFE_CHANGES)}); start a new run instead")
    refused = {k: v for k, v in changes.items() if not any(k == a or k.startswith(a + ".") for a in allow)}
    if refused:
        listed = "; ".join(f"{k}: {o!r} -> {n!r}" for k, (o, n) in refused.items())
        hint = ("pass --allow-change for each" if all(is_safe(k) for k in refused)
                else "these change what the run computes: resume with the original recipe or start a new run")
        raise RunDirError(f"{run_dir}: the recipe differs from the run's recipe.yaml ({listed}); {hint}")
    return changes


def record_changes(run_dir: Path, changes: dict[str, tuple]) -> None:
    """Append the allowed changes to ``resume-changes.jsonl`` (nothing when there are none)."""
    if not changes:
        return
    row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "changes": {k: {"old": o, "new": n} for k, (o, n) in changes.items()}}
    with open(run_dir / "resume-changes.jsonl", "a") as f:
        f.write(json.dumps(row, default=str) + "\n")


def data_files(recipe: Recipe) -> dict[str, str]:
    """The local files (or directories) the run trains and validates on, by recipe field."""
    from tandem.data.readers import looks_local

    out: dict[str, str] = {}
    for key in ("sft", "preference", "pretrain"):
        srcs = recipe.data.sources(key)
        for i, src in enumerate(srcs):
            if src.source and looks_local(src.source):
                out[f"data.{key}" + (f".{i}" if len(srcs) > 1 else "")] = src.source
    for role, src in recipe.data.val.items():
        if src.source and looks_local(src.source):
            out[f"data.val.{role}"] = src.source
    return out


def record_data(run_dir: Path, recipe: Recipe) -> None:
    """Record a content fingerprint of each data source in ``RUN/data-fingerprints.json`` (when a run starts)."""
    from tandem.io.fingerprint import record_fingerprints

    record_fingerprints(run_dir, data_files(recipe))


def check_data_unchanged(run_dir: Path, recipe: Recipe) -> None:
    """Refuse (``RunDirError``) a resume whose data changed since the run started, naming the file. ``--allow-change``
    does not cover data: a resumed run would mix old and new rows."""
    from tandem.io.fingerprint import changed_fingerprints

    changed = changed_fingerprints(run_dir)
    if changed is None:
        log.warning("%s: no data fingerprints recorded (a run from an older tandem): the data is not checked", run_dir)
        return
    if changed:
        raise RunDirError(f"{run_dir}: cannot resume, the data changed: {'; '.join(changed)}. A resumed run would mix old "
                          "and new rows: restore the data, or start again with --overwrite (--allow-change does not "
                          "cover data)")
