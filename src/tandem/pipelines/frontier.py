"""Frontiers instead of points: each trained model's trade-off curve between instruction following and the preferred
style, so that two methods are compared at the same style rate rather than at wherever each happened to stop.

Two kinds, set in a study's ``_contrasts.yaml`` (``frontier:``)::

    frontier:
      early_stop: {arm: sequential, at: [0.25, 0.5, 0.75]}   # checkpoints of the arm's last stage
      wise_ft: {toward: sft-only, alphas: [0.5, 0.75]}       # every final model merged toward the same seed's sft-only
      style_at: 0.5                                          # pass rate interpolated at this style rate

* Early stop: the arm's checkpoint at each fraction of its last stage (``RUN/checkpoints/<name>``; the recipe must
  checkpoint there: ``checkpoint.every`` dividing those steps, ``keep`` at least the run's number of checkpoints) is evaluated as row ``<arm>@<fraction>``.
  Fraction 0 is the stage's start: the checkpoint that closed the stage before it (for ``sequential``, the run's own
  SFT model), so ``<arm>@0`` minus ``<arm>`` is the last stage's cost on the very model it started from.
* Wise-FT: ``theta = (1 - alpha) theta_toward + alpha theta_arm`` (full weights, :func:`tandem.pipelines.merge.merge_models`)
  for every other arm and seed, evaluated as row ``<arm>~<alpha>`` (alpha 1 is the arm itself). ``toward: <arm>@0``
  merges every arm of a seed (that arm too) toward the checkpoint that closed the next-to-last stage of that seed's
  ``<arm>`` run: with ``sequential@0``, Wise-FT between the weights before and after its preference stage, as the
  paper defines it, and the same SFT model for every arm of the seed, without training an ``sft-only`` run.
* ``frontier/pass_at_style``: per arm and seed (an early stop at 0 is left out: Wise-FT curves do not have their
  alpha-0 end either), the best pass rate the arm's points reach at a style rate of at least
  ``style_at`` (:func:`pass_at_style`): the points' Pareto front (no other point has both a higher style and a higher
  pass rate), linearly interpolated; below the front's lowest style rate, that point's pass rate; ``None`` above its
  highest. It is a column of the arm's row, so ``tandem contrasts`` compares it across arms (seed-level bootstrap).

Frontier rows are evaluated with the recipe's eval block restricted to the generation metric ``conflict`` (pass and
style rates; no temperature sweep) under ``OUT/<arm>-s<seed>/frontier/<point>/eval``, reused on ``--resume``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tandem.io.checkpoints import stage_end
from tandem.merging.pareto import pareto_front

log = logging.getLogger("tandem")


def check_frontier(spec: dict | None, where: str) -> dict:
    """The ``frontier`` block, checked (one-line errors naming ``where``)."""
    if spec is None:
        return {}
    if not isinstance(spec, dict) or set(spec) - {"early_stop", "wise_ft", "style_at"}:
        raise ValueError(f"{where}: frontier takes early_stop, wise_ft and style_at")
    es, wf = spec.get("early_stop"), spec.get("wise_ft")
    for name, block, keys, field, low in (("early_stop", es, {"arm", "at"}, "at", 0.0),
                                          ("wise_ft", wf, {"toward", "alphas"}, "alphas", None)):
        if block is None:
            continue
        if not isinstance(block, dict) or set(block) != keys or not isinstance(block[field], list) or not block[field] \
                or not all(isinstance(v, (int, float)) and (0 < v < 1 or v == low) for v in block[field]):
            span = "[0, 1)" if low == 0 else "(0, 1)"
            raise ValueError(f"{where}: frontier.{name} needs exactly {sorted(keys)}, with {field} a list of numbers in {span}")
    if wf is not None:
        check_toward(wf["toward"], f"{where}: frontier.wise_ft.toward")
    s = spec.get("style_at")
    if s is not None and not (isinstance(s, (int, float)) and 0 <= s <= 1):
        raise ValueError(f"{where}: frontier.style_at must be a number in [0, 1]")
    return spec


def early_stop_checkpoints(run_dir: Path, fractions: list[float]) -> list[tuple[float, Path]]:
    """``(fraction, checkpoint dir)`` of the run's last stage at each fraction of its steps; fraction 0 is the
    checkpoint that closed the stage before it (``ValueError`` naming the missing step when the run did not checkpoint
    there, or when the last stage is the run's first)."""
    stages = sorted(p for p in (run_dir / "stages").iterdir() if (p / "stage.json").is_file())
    last = json.loads((stages[-1] / "stage.json").read_text())
    by_step = {}
    for c in (run_dir / "checkpoints").glob("*/state.json"):
        st = json.loads(c.read_text())
        if st.get("stage_index") == last["index"]:
            by_step[int(st["stage_step"])] = c.parent
    start = stage_end(run_dir / "checkpoints", last["index"] - 1) if last["index"] > 0 else None
    if start is not None:
        by_step[0] = start
    out = []
    for f in fractions:
        step = int(f * last["steps"] + 0.5)  # half up (round() would take 2.5 to 2)
        if step not in by_step:
            raise ValueError(f"{run_dir}: no checkpoint at step {step} of stage {last['name']} ({f:g} of {last['steps']}); "
                             "set checkpoint.every to divide it and checkpoint.keep to at least the number of checkpoints the run writes")
        out.append((f, by_step[step]))
    return out


def check_toward(toward, where: str) -> None:
    """A ``toward`` value (``frontier.wise_ft``, ``group_ratios``): an arm, or an arm's early stop at 0."""
    if not (isinstance(toward, str) and toward.partition("@")[2] in ("", "0")):
        raise ValueError(f"{where} must be an arm, or an arm's early stop at 0 ('<arm>@0')")


def toward_model(toward: str, seed: int, by_key: dict) -> Path | None:
    """The model the seed's arms are merged toward: ``<arm>``'s final model, or for ``<arm>@0`` the checkpoint that
    closed that run's next-to-last stage; ``None`` when the study has no such run for ``seed``."""
    arm, _, at = toward.partition("@")
    row = by_key.get((arm, seed))
    if row is None:
        return None
    return Path(row["run"]) / "final" if not at else early_stop_checkpoints(Path(row["run"]), [0.0])[0][1]


def interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """``y`` at ``x`` on the piecewise-linear curve through ``(x, y)`` points (sorted by x; equal x averaged);
    ``None`` outside ``[min x, max x]``."""
    merged: dict[float, list[float]] = {}
    for px, py in points:
        merged.setdefault(px, []).append(py)
    pts = sorted((px, sum(v) / len(v)) for px, v in merged.items())
    if not pts or not pts[0][0] <= x <= pts[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[0][1]


def pass_at_style(points: list[tuple[float, float]], style_at: float) -> float | None:
    """The best pass rate reached at a style rate of at least ``style_at`` by the ``(style, pass)`` points, one line
    between neighbouring Pareto points (a dominated point, e.g. an early stop that a Wise-FT merge beats on both
    rates, is not on the frontier); ``None`` when no point reaches ``style_at``."""
    front = [points[i] for i in pareto_front(points, maximize=(True, True))]
    if not front or style_at > max(x for x, _ in front):
        return None
    low = min(front)
    return low[1] if style_at <= low[0] else interpolate(front, style_at)


def arm_curve(row: dict, points: list[tuple[float, dict]]) -> list[tuple[float | None, float | None]]:
    """``(style, pass)`` of an arm's row and of its frontier points (``(fraction or alpha, metrics)``), leaving out an
    early stop at 0: that is the model before the stage, and no Wise-FT curve has its alpha-0 end either."""
    key = ("conflict/style_rate", "conflict/pass_rate")
    return [(row.get(key[0]), row.get(key[1]))] + [(r.get(key[0]), r.get(key[1])) for where, r in points if where > 0]


def _eval_point(recipe, point_dir: Path, model_dir: Path, reuse: bool) -> dict:
    from tandem.pipelines.compare import eval_row

    r = recipe.model_copy(update={"eval": recipe.eval.model_copy(update={"metrics": ["conflict"], "also": {}})})
    return eval_row(r, point_dir, sweep=False, reuse=reuse, model_dir=model_dir)


def frontier_rows(spec: dict, rows: list[dict], recipes: dict[str, object], reuse: bool) -> list[dict]:
    """Evaluate every frontier point of ``rows`` (the study's trained rows); returns the new rows and adds
    ``frontier/pass_at_style`` to the trained rows."""
    from tandem.pipelines.merge import merge_models

    new: list[dict] = []
    es, wf = spec.get("early_stop"), spec.get("wise_ft")
    by_key = {(r["method"], r["seed"]): r for r in rows if r["method"] in recipes}
    for (arm, seed), row in by_key.items():
        run_dir, points = Path(row["run"]), []
        if es and arm == es["arm"]:
            points += [(f"{arm}@{f:g}", f, ckpt) for f, ckpt in early_stop_checkpoints(run_dir, es["at"])]
        toward = toward_model(wf["toward"], seed, by_key) if wf else None
        if toward is not None and arm != wf["toward"]:
            for a in wf["alphas"]:
                merged = run_dir / "frontier" / f"wise-ft-{a:g}" / "model"
                if not (merged / "config.json").is_file():
                    merge_models(str(toward), str(run_dir / "final"), merged, alpha=a, overwrite=True)
                points.append((f"{arm}~{a:g}", a, merged))
        scored = []
        for name, where, model_dir in points:
            point_dir = run_dir / "frontier" / name.replace("@", "-at-").replace("~", "-wise-")
            log.info("frontier: %s seed %d", name, seed)
            res = _eval_point(recipes[arm], point_dir, Path(model_dir), reuse)
            new.append({"method": name, "seed": seed, "run": str(point_dir), **res})
            scored.append((where, res))
        curve = arm_curve(row, scored)
        if spec.get("style_at") is not None and all(v is not None for p in curve for v in p):
            row["frontier/pass_at_style"] = pass_at_style(curve, float(spec["style_at"]))
    return new
