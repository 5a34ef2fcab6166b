from pathlib import Path

import pytest

from tandem.config.recipe import RecipeError, load_recipe

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    r = load_recipe(path)
    if path.name in ("tax.yaml", "tax-study.yaml"):  # model-averaging recipes: no training
        assert r.tax.tuned and r.tax.reward_model
    else:
        from tandem.schedules import build_stages

        roles = {s.role for s in build_stages(r.schedule.method, r.schedule.parts)}
        assert roles <= set(r.objectives) | {"preference"} and r.objectives


def _write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


BASE = """\
output_dir: runs/x
model:
  name_or_path: some/model
data:
  sft: {source: a.jsonl}
objectives:
  sft: {name: sft}
"""


def test_unknown_key_names_key_line_and_file(tmp_path):
    p = _write(tmp_path, BASE + "optimizer:\n  lr: 1.0e-5\n  learning_rat: 3\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "optimizer.learning_rat" in msg and str(p) in msg and "line 10" in msg
    assert "did you mean 'optimizer.lr'?" in msg  # TRL's learning_rate is the close match, named as tandem's field


def test_alias_and_its_field_both_given_names_the_line(tmp_path):
    p = _write(tmp_path, BASE + "optimizer:\n  lr: 1.0e-5\n  learning_rate: 3\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "optimizer.learning_rate and optimizer.lr are both given" in msg and f"{p}, line 10" in msg


def test_misspelt_top_level_key(tmp_path):
    p = _write(tmp_path, BASE + "sedd: 3\n")
    with pytest.raises(RecipeError, match="unknown key 'sedd'"):
        load_recipe(p)


def test_bad_value_names_field(tmp_path):
    p = _write(tmp_path, BASE + "batching: {batch_size: 0}\n")
    with pytest.raises(RecipeError, match="batching.batch_size"):
        load_recipe(p)


def test_set_overrides_nested_values(tmp_path):
    p = _write(tmp_path, BASE)
    r = load_recipe(p, ["optimizer.lr=3e-4", "schedule.max_steps=7", "model.lora.r=4", "data.overlong=drop"])
    assert r.optimizer.lr == pytest.approx(3e-4)
    assert r.schedule.max_steps == 7
    assert r.model.lora.r == 4
    assert r.data.overlong == "drop"


def test_set_with_unknown_key_is_an_error(tmp_path):
    p = _write(tmp_path, BASE)
    with pytest.raises(RecipeError, match="optimizer.lrr"):
        load_recipe(p, ["optimizer.lrr=1"])


def test_unknown_objective_role(tmp_path):
    p = _write(tmp_path, BASE.replace("sft: {name: sft}", "sfft: {name: sft}"))
    with pytest.raises(RecipeError, match="sfft"):
        load_recipe(p)


def test_rows_default_to_max_length(tmp_path):
    r = load_recipe(_write(tmp_path, BASE.replace("  sft: {source: a.jsonl}", "  sft: {source: a.jsonl}\n  max_length: 96")))
    assert r.batching.max_tokens_per_row == "max_length" and r.batching.row_tokens(r.data.max_length) == 96
    r = load_recipe(_write(tmp_path, BASE), ["batching.max_tokens_per_row=2048"])
    assert r.batching.row_tokens(r.data.max_length) == 2048
    r = load_recipe(_write(tmp_path, BASE), ["batching.max_tokens_per_row=null"])
    assert r.batching.row_tokens(r.data.max_length) is None


@pytest.mark.parametrize("value", ["0", "-3", "max_len"])
def test_bad_row_cap_names_field(tmp_path, value):
    with pytest.raises(RecipeError, match="batching.max_tokens_per_row"):
        load_recipe(_write(tmp_path, BASE + f"batching: {{max_tokens_per_row: {value}}}\n"))


def test_exponent_numbers_without_a_dot_are_numbers_in_recipes_and_set_flags():
    """PyYAML (YAML 1.1) reads 1e-06 as a string; a free-form block (hbat.ewc) then got '1e-06' and failed deep in the
    regularizer. Recipes and --set values read it as the number it is (YAML 1.2); quoted stays a string."""
    from tandem.config.yamlsrc import apply_overrides, load_yaml

    assert load_yaml("a: 1e-06\nb: 5E3\nc: '1e-4'\nd: 1e") == {"a": 1e-06, "b": 5000.0, "c": "1e-4", "d": "1e"}
    raw = apply_overrides({"hbat": {"ewc": {"f_max": 50.0}}}, ["hbat.ewc.f_max=1e-06"])
    assert raw["hbat"]["ewc"]["f_max"] == 1e-06 and isinstance(raw["hbat"]["ewc"]["f_max"], float)
