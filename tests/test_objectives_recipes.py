"""The recipe examples of ORPO, SimPO and DPOP validate, and each objective trains two steps in the engine."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tandem.config.recipe import load_recipe
from tandem.objectives import Objective, build

EXAMPLES = Path(__file__).resolve().parents[1] / "recipes" / "examples"


@pytest.mark.parametrize("name", ["orpo", "simpo", "dpop"])
def test_recipe_example_validates_and_builds_its_objective(name):
    from tandem.schedules import build_stages

    r = load_recipe(EXAMPLES / f"{name}.yaml")
    assert {s.role for s in build_stages(r.schedule.method, r.schedule.parts)} == {"preference"}
    cfg = r.objectives["preference"].model_dump()
    assert cfg.pop("name") == name
    assert isinstance(build(name, **cfg), Objective)


@pytest.mark.parametrize("name, key", [("orpo", "log_odds_ratio"), ("simpo", "rewards/margin"),
                                       ("dpop", "dpop/chosen_drop")])
def test_new_objectives_train_in_the_engine(tmp_path, tiny_model_dir, synthetic_files, name, key):
    from test_engine_train import read_metrics, recipe

    from tandem.pipelines.train import train

    r = recipe(tmp_path, tiny_model_dir, synthetic_files, method="preference",
               **{"objectives.preference": {"name": name}, "schedule.max_steps_per_stage": 2, "checkpoint.every": 0})
    train(r)
    rows = read_metrics(Path(r.output_dir))
    train_rows = [x for x in rows if x["split"] == "train"]
    assert [x["step"] for x in train_rows] == [1, 2] and all(math.isfinite(x["loss"]) for x in train_rows)
    assert all(math.isfinite(x[key]) for x in train_rows)
    val = [x for x in rows if x["split"] == "val"]
    assert val and math.isfinite(val[-1]["preference/loss"])
    if name == "dpop":
        assert train_rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)  # policy == reference at step 1
