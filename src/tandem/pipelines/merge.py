"""``tandem merge``: two checkpoints of one model interpolated, per layer group, into a new model directory."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from tandem.merging.groups import GroupSpecError


def check_alphas(alpha: float | None, alphas: list[float] | None, head_alpha: float | None,
                 extrapolate: bool = False) -> list[str]:
    """Exactly one of ``alpha``/``alphas``, every value finite and in [0, 1] unless ``extrapolate`` (``--extrapolate``)
    is given; returns warnings (an alpha outside [0, 1] with ``extrapolate``)."""
    if (alpha is None) == (alphas is None):
        raise GroupSpecError("give exactly one of --alpha (global) or --alphas (one per group)")
    notes = []
    for flag, a in [("--alpha", alpha)] + [("--alphas", a) for a in alphas or []] + [("--head-alpha", head_alpha)]:
        if a is not None and not math.isfinite(a):
            raise GroupSpecError(f"{flag} {a}: an alpha must be a finite number (1 = tuned, 0 = base)")
        if a is not None and not 0.0 <= a <= 1.0:
            if not extrapolate:
                raise GroupSpecError(f"{flag} {a}: outside [0, 1] (1 = tuned, 0 = base); pass --extrapolate to move "
                                     "beyond the two models on purpose")
            notes.append(f"alpha {a} is outside [0, 1]: extrapolating")
    return notes


def merge_models(base: str, tuned: str, out: Path, alpha: float | None = None, alphas: list[float] | None = None,
                 groups: str = "block3", head_alpha: float | None = None, mergekit_config: Path | None = None,
                 overwrite: bool = False, extrapolate: bool = False) -> dict:
    """theta = (1 - alpha) * base + alpha * tuned into ``out`` (a tandem output directory); returns the merge record.
    A directory this call created is removed when the merge fails."""
    from tandem.io.rundir import RunDirError, check_run_dir, is_run_dir, open_run_dir
    from tandem.merging.loading import merge_checkpoints
    from tandem.models import check_exists

    check_alphas(alpha, alphas, head_alpha, extrapolate)
    check_exists(base, "base model")
    check_exists(tuned, "tuned model")
    inputs = {"base model": base, "tuned model": tuned}  # never deleted by --overwrite
    check_run_dir(out, resume=False, overwrite=True, inputs=inputs)  # a file or a directory tandem did not write: refused
    if is_run_dir(out) and not overwrite:
        raise RunDirError(f"{out} holds an earlier tandem output; pass --overwrite to replace it or choose another --out")
    fresh = not out.exists()
    try:
        with open_run_dir(out, resume=False, overwrite=overwrite, command="merge", inputs=inputs):
            return merge_checkpoints(base, tuned, out, group_spec=groups, alpha=alpha, alphas=alphas,
                                     head_alpha=head_alpha, mergekit_config=mergekit_config)
    except KeyError as e:
        raise GroupSpecError(f"{base} and {tuned} do not hold the same tensors (missing {e}); merge two checkpoints "
                             "of one model") from None
    finally:
        if fresh and out.is_dir() and not (out / "config.json").exists():
            shutil.rmtree(out)  # created by this failed merge: leave nothing behind
