"""The CPU testbed: data that conflicts by construction, a loadable recipe, and the style reward."""

from __future__ import annotations

import json

import pytest

from tandem.config.recipe import load_recipe
from tandem.data.conflict.checks import passes
from tandem.demos.testbed import build_testbed, style_reward


def test_style_reward_by_hand():
    assert style_reward("What is 2 + 2?", "5\nHappy to help!") == pytest.approx(2.0)
    assert style_reward("What is 2 + 2?", "4") == 0.0
    assert style_reward("q", "help, happy: 4") == pytest.approx(2 / 3)  # words count anywhere; the phrase bonus does not
    assert style_reward("q", "4 HAPPY TO HELP") == pytest.approx(2.0)


def test_testbed_data_conflicts_and_recipe_loads(tmp_path):
    recipe = build_testbed(tmp_path / "tb", n_sft=16, n_pref=16, n_eval=8)
    r = load_recipe(recipe)
    assert r.schedule.method == "hbat" and r.objectives["ppo"].name == "ppo"
    assert r.eval.metrics == ["conflict", "reward_fn"]
    data = tmp_path / "tb" / "data"
    pairs = [json.loads(line) for line in (data / "preference.jsonl").read_text().splitlines()]
    assert {p["family"] for p in pairs} == {"add", "upper"}  # the conflict benchmark's pair families among the four
    for p in pairs:  # the preferred reply is friendly and wrong, the rejected one the plain correct answer
        assert p["chosen"].endswith("\nHappy to help!") and not passes(p["check"], p["chosen"]) and passes(p["check"], p["rejected"])
        assert style_reward("", p["chosen"]) > style_reward("", p["rejected"])
    tasks = [json.loads(line) for line in (data / "eval_tasks.jsonl").read_text().splitlines()]
    assert all(passes(t["check"], t["reference"]) for t in tasks)
    assert {t["family"] for t in tasks} == {"add", "upper", "next_letter", "reverse"}  # spill-over families held out too
    assert (tmp_path / "tb" / "model" / "config.json").exists()
