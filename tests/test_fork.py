"""--fork-from: a run that branches off another run at the checkpoint that closed a stage is the same run as one
trained straight through with the new recipe (the stages before the fork are shared, bit for bit), and it records
what changed; a mid-stage checkpoint, a missing one and --resume together with --fork-from are refused."""

from __future__ import annotations

import json

import pytest
from helpers_recipe import base_raw, with_overrides
from safetensors.torch import load_file

from tandem.pipelines.train import train

COMMON = {"schedule.method": "sequential", "schedule.max_steps_per_stage": 4, "checkpoint.every": 2,
          "checkpoint.keep": 10, "optimizer.scheduler": "constant", "data.val_size": 0}


def recipe(tmp_path, model, files, out: str, pref_lr: float):
    return with_overrides(base_raw(tmp_path, model, files),
                          {**COMMON, "output_dir": str(tmp_path / out), "optimizer.lr_by_role": {"preference": pref_lr}})


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, synthetic_files):
    tmp = tmp_path_factory.mktemp("fork")
    train(recipe(tmp, tiny_model_dir, synthetic_files, "source", 1e-3))
    train(recipe(tmp, tiny_model_dir, synthetic_files, "straight", 3e-3))  # the branch, trained from the start
    train(recipe(tmp, tiny_model_dir, synthetic_files, "branch", 3e-3),
          fork_from=tmp / "source" / "checkpoints" / "stage00-end")
    return tmp


def test_a_fork_is_the_run_trained_straight_through(runs):
    final = load_file(runs / "branch" / "final" / "model.safetensors")
    straight = load_file(runs / "straight" / "final" / "model.safetensors")
    assert final.keys() == straight.keys()
    assert all((final[k] == straight[k]).all() for k in final)
    source = load_file(runs / "source" / "final" / "model.safetensors")
    assert any((final[k] != source[k]).any() for k in final)  # another DPO stage: another model
    # the SFT stage is the source's, and the training rows are the straight run's, none repeated
    a, b = (load_file(runs / r / "stages" / "01-sft" / "end.safetensors") for r in ("branch", "source"))
    assert all((a[k] == b[k]).all() for k in a)
    rows = [json.loads(x) for x in open(runs / "branch" / "metrics.jsonl")]
    steps = [r["step"] for r in rows if r.get("split") == "train"]
    assert steps == sorted(set(steps)) and steps == [r["step"] for r in map(json.loads, open(runs / "straight" / "metrics.jsonl"))
                                                     if r.get("split") == "train"]


def test_a_fork_records_where_it_came_from_and_what_changed(runs):
    info = json.loads((runs / "branch" / "forked-from.json").read_text())
    assert info["checkpoint"].endswith("checkpoints/stage00-step000004") and info["stage_index"] == 0
    assert info["changes"] == {"optimizer.lr_by_role.preference": {"old": 1e-3, "new": 3e-3}}
    assert (runs / "branch" / "data-fingerprints.json").is_file()


def test_bad_forks_are_refused(runs, tiny_model_dir, synthetic_files):
    r = recipe(runs, tiny_model_dir, synthetic_files, "bad", 3e-3)
    with pytest.raises(ValueError, match="inside stage 1; fork at a stage's end"):
        train(r, fork_from=runs / "source" / "checkpoints" / "stage01-step000006")
    with pytest.raises(ValueError, match="no such checkpoint"):
        train(r, fork_from=runs / "source" / "checkpoints" / "stage00-step000099")
    with pytest.raises(ValueError, match="no checkpoint closed stage 5"):
        train(r, fork_from=runs / "source" / "checkpoints" / "stage05-end")
    with pytest.raises(ValueError, match="give one of them"):
        train(r, resume=True, fork_from=runs / "source" / "checkpoints" / "stage00-end")
    assert not (runs / "bad").exists()  # nothing written


def test_a_study_forks_each_run_from_the_same_named_run(runs, tiny_model_dir, synthetic_files):
    """tandem study --fork-from: every run starts from the source study's run of the same name and seed at
    --fork-at; a source run without that checkpoint is refused before anything is written."""
    import shutil

    import yaml

    from tandem.pipelines.study import study

    recipes = runs / "recipes"
    recipes.mkdir()
    raw = base_raw(runs, tiny_model_dir, synthetic_files)
    with_overrides(raw, {**COMMON, "optimizer.lr_by_role": {"preference": 1e-3}})  # fills raw in place
    (recipes / "sequential.yaml").write_text(yaml.safe_dump(raw))
    source = runs / "study-a"
    study(recipes, [0], source, [])
    with pytest.raises(ValueError, match="no checkpoint closed stage 3"):
        study(recipes, [0], runs / "study-x", ["optimizer.lr_by_role.preference=3e-3"], fork=(str(source), "stage03-end"))
    assert not (runs / "study-x").exists()
    study(recipes, [0], runs / "study-b", ["optimizer.lr_by_role.preference=3e-3"], fork=(str(source), "stage00-end"))
    info = json.loads((runs / "study-b" / "sequential-s0" / "forked-from.json").read_text())
    assert info["checkpoint"].startswith(str(source / "sequential-s0" / "checkpoints"))
    a, b = (load_file(runs / s / "sequential-s0" / "stages" / "01-sft" / "end.safetensors") for s in ("study-a", "study-b"))
    assert all((a[k] == b[k]).all() for k in a)
    final = load_file(runs / "study-b" / "sequential-s0" / "final" / "model.safetensors")
    straight = load_file(runs / "straight" / "final" / "model.safetensors")  # the same recipe, trained straight
    assert all((final[k] == straight[k]).all() for k in final)
    shutil.rmtree(recipes)
