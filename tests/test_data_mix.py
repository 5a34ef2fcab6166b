"""Several sources for one data role (``data.preference: [{source: A}, {source: B}]``): read in order and
concatenated, each with its own skip/limit, counted per source and in total; a bad item is named by its index and
line, a missing file or an empty list is refused before anything is written."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers_entry import cli_app, train
from helpers_recipe import base_raw, with_overrides
from typer.testing import CliRunner

from tandem.config.recipe import RecipeError, load_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_role_trains_on_every_source_of_its_list(tmp_path, tiny_model_dir, synthetic_files):
    pref = str(synthetic_files["preference"])
    r = with_overrides(base_raw(tmp_path, tiny_model_dir, synthetic_files, "dpo"), {
        "data.preference": [{"source": pref, "limit": 10}, {"source": pref, "skip": 30, "limit": 6}],
        "data.val_size": 4, "schedule.max_steps_per_stage": 1, "checkpoint.every": 0})
    assert [s.limit for s in r.data.sources("preference")] == [10, 6] and r.data.sources("sft")[0].limit is None
    train(r)
    info = json.loads((tmp_path / "run" / "data-preference.json").read_text())
    assert info["source"] == [pref, pref] and [s["rows"] for s in info["sources"]] == [10, 6]
    assert (info["train"], info["val"]) == (12, 4)  # 16 rows in all, the validation split drawn from the whole
    assert info["load"]["rows"] == sum(s["load"]["rows"] for s in info["sources"])


def write(tmp_path, preference) -> str:
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"name": "t", "output_dir": str(tmp_path / "run"), "model": {"name_or_path": "m"},
                                 "data": {"preference": preference}, "schedule": {"method": "dpo"},
                                 "objectives": {"preference": {"name": "dpo"}}}, sort_keys=False))
    return str(p)


def test_a_bad_item_is_named_by_its_index_and_line(tmp_path):
    path = write(tmp_path, [{"source": "a.jsonl"}, {"source": "b.jsonl", "limt": 3}])
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    lines = open(path).read().splitlines()
    item = next(i for i, ln in enumerate(lines, 1) if "limt" in ln)  # the line of the bad key
    assert f"line {item}: unknown key 'data.preference.1.limt'" in str(e.value)
    with pytest.raises(RecipeError, match="empty list of sources"):
        load_recipe(write(tmp_path, []))


def test_a_missing_file_in_the_list_is_refused_before_the_run_dir_exists(tmp_path, tiny_model_dir, synthetic_files):
    raw = base_raw(tmp_path, tiny_model_dir, synthetic_files, "dpo")
    raw["data"]["preference"] = [{"source": str(synthetic_files["preference"])}, {"source": str(tmp_path / "nope.jsonl")}]
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    res = CliRunner().invoke(cli_app, ["train", str(tmp_path / "r.yaml")])
    assert res.exit_code == 2 and "nope.jsonl" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()


def test_an_empty_plain_text_source_is_named_not_a_traceback(tmp_path, tiny_model_dir, synthetic_files):
    from helpers_recipe import base_raw as raw_of

    from tandem.data.errors import DataError
    from tandem.models import load_tokenizer
    from tandem.pipelines.train import load_role_features

    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    raw = raw_of(tmp_path, tiny_model_dir, synthetic_files, "rlhf+pt")
    raw["data"]["pretrain"] = [{"source": str(synthetic_files["sft"]), "format": "sft"}, {"source": str(empty)}]
    r = with_overrides(raw, {})
    with pytest.raises(DataError, match="empty.txt: no text to train on"):
        load_role_features(r, "pretrain", load_tokenizer(str(tiny_model_dir)))
