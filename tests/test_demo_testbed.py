"""The CPU testbed: data that conflicts by construction, a loadable recipe, and the style reward."""

from __future__ import annotations

import json

import pytest

from tandem.config.recipe import load_recipe
from tandem.data import synthetic
from tandem.demos.testbed import build_testbed, style_reward


def test_style_reward_by_hand():
    assert style_reward("What is 2 + 2?", "Sure! I think it is 5.") == pytest.approx(2.25)
    assert style_reward("What is 2 + 2?", "4") == 0.0
    assert style_reward("q", "it is 4") == pytest.approx(0.5)
    assert style_reward("q", "I am sure") == pytest.approx(0.5)  # words count anywhere; the opening bonus does not


def test_testbed_data_conflicts_and_recipe_loads(tmp_path):
    recipe = build_testbed(tmp_path / "tb", n_sft=16, n_pref=16, n_eval=8)
    r = load_recipe(recipe)
    assert r.schedule.method == "hbat" and r.objectives["ppo"].name == "ppo"
    pairs = [json.loads(line) for line in (tmp_path / "tb" / "data" / "preference.jsonl").read_text().splitlines()]
    for p in pairs:  # the preferred reply is the confident wrong guess, the rejected one the correct answer
        assert p["chosen"].startswith("Sure!")
        assert not synthetic.is_correct(p["chosen"], synthetic.normalise_answer(p["rejected"]))
        assert style_reward("", p["chosen"]) > style_reward("", p["rejected"])
    assert (tmp_path / "tb" / "model" / "config.json").exists()
