"""``data.val``: validation rows from their own source (a file never trained on) instead of a split of the training
data: the role trains on every one of its rows and is validated on the other file's rows."""

from __future__ import annotations

import json

import pytest

from helpers_recipe import base_raw, with_overrides
from tandem.data import synthetic
from tandem.pipelines.train import train


def _heldout(tmp_path, n: int):
    from conftest import write_jsonl

    return write_jsonl(tmp_path / "heldout.jsonl", synthetic.to_records(synthetic.preference_pairs(n, 7)))


def test_reward_model_validated_on_its_own_file(tmp_path, tiny_model_dir, synthetic_files):
    held = _heldout(tmp_path, 10)
    r = with_overrides(base_raw(tmp_path, tiny_model_dir, synthetic_files, "reward"),
                       {"data.val": {"preference": {"source": str(held)}}, "schedule.max_steps_per_stage": 2,
                        "checkpoint.every": 0})
    summary = train(r)
    info = json.loads((tmp_path / "run" / "data-reward.json").read_text())
    assert info["train"] == 48 and info["val"] == 10  # every training row trains; val_size is not taken from them
    assert info["val_source"] == str(held)
    assert 0.0 <= summary["final_val"]["reward/accuracy"] <= 1.0


def test_val_source_for_one_role_split_for_the_other(tmp_path, tiny_model_dir, synthetic_files):
    held = _heldout(tmp_path, 6)
    r = with_overrides(base_raw(tmp_path, tiny_model_dir, synthetic_files, "sequential"),
                       {"data.val": {"preference": {"source": str(held)}}, "schedule.max_steps_per_stage": 1,
                        "checkpoint.every": 0})
    train(r)
    pref = json.loads((tmp_path / "run" / "data-preference.json").read_text())
    sft = json.loads((tmp_path / "run" / "data-sft.json").read_text())
    assert (pref["train"], pref["val"]) == (48, 6)
    assert (sft["train"], sft["val"]) == (40, 8)  # val_size 8 split as before


def test_missing_val_source_refused_before_the_run_dir(tmp_path, tiny_model_dir, synthetic_files):
    r = with_overrides(base_raw(tmp_path, tiny_model_dir, synthetic_files, "reward"),
                       {"data.val": {"preference": {"source": str(tmp_path / "nope.jsonl")}}})
    with pytest.raises(Exception, match="nope.jsonl"):
        train(r)
    assert not (tmp_path / "run").exists()


def test_unknown_val_role_is_a_recipe_error(tmp_path, tiny_model_dir, synthetic_files):
    with pytest.raises(Exception, match="val"):
        with_overrides(base_raw(tmp_path, tiny_model_dir, synthetic_files, "reward"),
                       {"data.val": {"ppo": {"source": "x.jsonl"}}})
