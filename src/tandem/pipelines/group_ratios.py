"""Question (d) of the conflict study: does averaging per layer group beat global Wise-FT, when both pick their ratios
on validation prompts and are scored on the test prompts?

Set in a study's ``_contrasts.yaml``::

    group_ratios:
      toward: sft-only                      # every other arm's final model is averaged toward this arm (same seed);
                                            # <arm>@0: toward that run's own SFT model, as frontier.wise_ft.toward
      groups: block3                        # `tandem merge --groups`
      grid: [0.5, 0.75, 1.0]                # each group's weight of the arm's model (1 = the arm itself)
      val: runs/conflict/rho1-s0/val.jsonl  # the prompts the ratios are picked on (the recipe's eval data is the test)
      style_at: 0.5                         # the pick: highest val pass rate among points with val style >= style_at

Candidates are every combination of ``grid`` over the groups (``len(grid) ** groups`` merges, each scored on the
validation prompts with the ``conflict`` metric). The per-group pick is the best of all of them; the global pick the
best of those whose groups share one ratio (Wise-FT), so on validation the per-group pick is at least as good by
construction, and only the test prompts can say whether it generalises. Both picks are then scored on the test prompts
as rows ``<arm>~groups`` and ``<arm>~global`` (with their ``ratios``), which ``tandem contrasts`` pairs per prompt:
question (d) is ``<arm>~groups - <arm>~global``. Everything lands under ``OUT/<arm>-s<seed>/group-ratios/`` and is
reused on ``--resume``. The final norm and LM head take the mean of the group ratios (`tandem merge`'s default).
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

log = logging.getLogger("tandem")
KEYS = {"toward", "groups", "grid", "val", "style_at"}


def check_group_ratios(spec: dict | None, where: str) -> dict:
    """The ``group_ratios`` block, checked (one-line errors naming ``where``)."""
    if spec is None:
        return {}
    if not isinstance(spec, dict) or set(spec) != KEYS:
        raise ValueError(f"{where}: group_ratios needs exactly {', '.join(sorted(KEYS))}")
    grid = spec["grid"]
    if not isinstance(grid, list) or not grid or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in grid):
        raise ValueError(f"{where}: group_ratios.grid must be a non-empty list of numbers in [0, 1]")
    if not (isinstance(spec["style_at"], (int, float)) and 0 <= spec["style_at"] <= 1):
        raise ValueError(f"{where}: group_ratios.style_at must be a number in [0, 1]")
    from tandem.pipelines.frontier import check_toward

    check_toward(spec["toward"], f"{where}: group_ratios.toward")
    if not Path(str(spec["val"])).is_file():
        raise ValueError(f"{where}: group_ratios.val: no file {spec['val']} (`tandem conflict make` writes val.jsonl)")
    return spec


def candidates(grid: list[float], n_groups: int) -> list[tuple[float, ...]]:
    """Every combination of ``grid`` over ``n_groups`` groups, in grid order."""
    return list(itertools.product(grid, repeat=n_groups))


def pick(points: list[tuple[tuple[float, ...], float, float]], style_at: float) -> tuple[float, ...]:
    """The ratios of the best ``(ratios, pass, style)`` point: the highest pass rate among points whose style rate
    reaches ``style_at`` (the first in grid order on a tie); with none there, the highest style rate (then pass)."""
    reached = [p for p in points if p[2] >= style_at]
    if reached:
        return max(reached, key=lambda p: p[1])[0]
    return max(points, key=lambda p: (p[2], p[1]))[0]


def _n_groups(model_dir: Path, groups: str) -> int:
    from tandem.merging.groups import parse_group_spec
    from tandem.models.resolve import adapter_base, is_adapter_dir

    config = (Path(adapter_base(model_dir)) if is_adapter_dir(model_dir) else model_dir) / "config.json"  # LoRA: base's
    n_layers = int(json.loads(config.read_text())["num_hidden_layers"])
    return len(parse_group_spec(groups, n_layers))


def _name(ratios: tuple[float, ...]) -> str:
    return "r-" + "-".join(f"{a:g}" for a in ratios)


def group_ratio_rows(spec: dict, rows: list[dict], recipes: dict[str, object], reuse: bool) -> list[dict]:
    """The ``<arm>~groups`` and ``<arm>~global`` rows (test scores of the ratios picked on validation) of every
    trained arm but ``toward``, for each seed that also has a ``toward`` row."""
    from tandem.pipelines.frontier import _eval_point, toward_model
    from tandem.pipelines.merge import merge_models

    new: list[dict] = []
    by_key = {(r["method"], r["seed"]): r for r in rows if r["method"] in recipes}
    for (arm, seed), row in by_key.items():
        base = toward_model(str(spec["toward"]), seed, by_key)
        if arm == spec["toward"] or base is None:
            continue
        tuned, root = Path(row["run"]) / "final", Path(row["run"]) / "group-ratios"
        recipe = recipes[arm]
        val_recipe = recipe.model_copy(update={"eval": recipe.eval.model_copy(update={
            "data": recipe.eval.data.model_copy(update={"source": str(spec["val"])})})})
        points, models = [], {}
        for ratios in candidates([float(v) for v in spec["grid"]], _n_groups(tuned, str(spec["groups"]))):
            model = root / _name(ratios) / "model"
            if not (model / "config.json").is_file():
                merge_models(str(base), str(tuned), model, alphas=list(ratios), groups=str(spec["groups"]), overwrite=True)
            log.info("group ratios: %s seed %d, %s on val", arm, seed, _name(ratios))
            res = _eval_point(val_recipe, root / _name(ratios) / "val", model, reuse)
            points.append((ratios, res["conflict/pass_rate"], res["conflict/style_rate"]))
            models[ratios] = model
        chosen = {"groups": pick(points, float(spec["style_at"])),
                  "global": pick([p for p in points if len(set(p[0])) == 1], float(spec["style_at"]))}
        for kind, ratios in chosen.items():
            point_dir = root / f"test-{kind}"
            res = _eval_point(recipe, point_dir, models[ratios], reuse)
            new.append({"method": f"{arm}~{kind}", "seed": seed, "run": str(point_dir), "ratios": list(ratios), **res})
    return new
