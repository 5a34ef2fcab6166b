"""Recipe validation: duplicate keys, --set errors named by flag, numeric ranges (tandem.config.recipe)."""

from __future__ import annotations

import pytest

from tandem.config.recipe import RecipeError, load_recipe, parse_recipe
from tandem.config.yamlsrc import DuplicateKeyError, flag_of, load_yaml

BASE = """\
output_dir: runs/x
model:
  name_or_path: some/model
data:
  sft: {source: a.jsonl}
objectives:
  sft: {name: sft}
"""


def _write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_duplicate_key_names_the_key_and_both_lines(tmp_path):
    p = _write(tmp_path, BASE + "batching:\n  batch_size: 4\n  mode: pad\n  batch_size: 8\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert str(p) in msg and "'batch_size'" in msg and "lines 9 and 11" in msg


def test_duplicate_top_level_key(tmp_path):
    p = _write(tmp_path, BASE + "seed: 1\nseed: 2\n")
    with pytest.raises(RecipeError, match=r"key 'seed' is given twice \(lines 8 and 9\)"):
        load_recipe(p)


def test_duplicate_keys_in_a_flow_mapping_and_merge_keys_allowed():
    with pytest.raises(DuplicateKeyError, match="'a'"):
        load_yaml("x: {a: 1, a: 2}\n")
    # a merge key followed by an explicit override is not a duplicate
    assert load_yaml("base: &b {a: 1}\nx:\n  <<: *b\n  a: 2\n")["x"] == {"a": 2}


def test_same_key_in_different_mappings_is_fine(tmp_path):
    p = _write(tmp_path, BASE + "eval: {seed: 1}\ntax: {seed: 2}\n")
    r = load_recipe(p)
    assert (r.eval.seed, r.tax.seed) == (1, 2)


def test_set_with_a_bad_value_names_the_flag_not_a_file_line(tmp_path):
    p = _write(tmp_path, BASE + "optimizer:\n  lr: 1.0e-5\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(p, ["optimizer.lr=abc"])
    msg = str(e.value)
    assert "--set optimizer.lr=abc" in msg and "line" not in msg and "'optimizer.lr'" in msg


def test_set_with_invalid_yaml_is_one_line_naming_the_flag(tmp_path):
    p = _write(tmp_path, BASE)
    with pytest.raises(RecipeError) as e:
        load_recipe(p, ["optimizer.betas=[0.9, 0.99"])
    msg = str(e.value)
    assert msg.startswith("--set optimizer.betas=[0.9, 0.99:") and "not valid YAML" in msg and "\n" not in msg


def test_set_parent_mapping_is_blamed_for_a_child_value(tmp_path):
    p = _write(tmp_path, BASE)
    with pytest.raises(RecipeError, match=r"--set optimizer=\{lr: -1\}: 'optimizer.lr'"):
        load_recipe(p, ["optimizer={lr: -1}"])


def test_file_values_are_still_blamed_on_their_line_when_other_flags_are_set(tmp_path):
    p = _write(tmp_path, BASE + "optimizer:\n  lr: -1.0\n")
    with pytest.raises(RecipeError, match=r"r\.yaml, line 9: 'optimizer\.lr'"):
        load_recipe(p, ["optimizer.eps=1e-6"])


def test_flag_of_picks_the_last_flag_for_a_key():
    assert flag_of(["a.b=1", "a.c=2", "a.b=3"], ("a", "b")) == "a.b=3"
    assert flag_of(["a.c=2"], ("a", "b")) is None


def test_empty_key_part_in_set_is_refused(tmp_path):
    with pytest.raises(RecipeError, match="empty key part"):
        load_recipe(_write(tmp_path, BASE), ["optimizer..lr=1"])


def _raw(**sections):
    raw = {"output_dir": "x", "model": {"name_or_path": "m"}, "data": {"sft": {"source": "a.jsonl"}},
           "objectives": {"sft": {"name": "sft"}}}
    for k, v in sections.items():
        raw[k] = v
    return raw


BAD_VALUES = [
    ("optimizer", {"lr": -1e-5}, "optimizer.lr"),
    ("optimizer", {"lr": 0}, "optimizer.lr"),
    ("optimizer", {"lr": float("nan")}, "optimizer.lr"),
    ("optimizer", {"lr": float("inf")}, "optimizer.lr"),
    ("optimizer", {"eps": 0}, "optimizer.eps"),
    ("optimizer", {"betas": [0.9, 1.0]}, "optimizer.betas"),
    ("optimizer", {"betas": [-0.1, 0.9]}, "optimizer.betas"),
    ("optimizer", {"weight_decay": -0.1}, "optimizer.weight_decay"),
    ("optimizer", {"max_grad_norm": 0}, "optimizer.max_grad_norm"),
    ("optimizer", {"warmup_ratio": 1.5}, "optimizer.warmup_ratio"),
    ("schedule", {"epochs": 0}, "schedule.epochs"),
    ("schedule", {"epochs": float("inf")}, "schedule.epochs"),
    ("schedule", {"parts": 0}, "schedule.parts"),
    ("logging", {"every": 0}, "logging.every"),
    ("eval", {"temperature": -0.5}, "eval.temperature"),
    ("eval", {"top_p": 0}, "eval.top_p"),
    ("eval", {"top_p": 1.5}, "eval.top_p"),
    ("eval", {"max_new_tokens": 0}, "eval.max_new_tokens"),
    ("eval", {"batch_size": 0}, "eval.batch_size"),
    ("eval", {"temperatures": [0.5, -1]}, "eval.temperatures"),
    ("eval", {"seed": -1}, "eval.seed"),
    ("hbat", {"mix_gamma": -1}, "hbat.mix_gamma"),
    ("hbat", {"ewc": {"lam": float("nan")}}, "hbat.ewc"),
    ("tax", {"sweep": [0.0, float("nan")]}, "tax.sweep"),
    ("tax", {"head_alpha": float("inf")}, "tax.head_alpha"),
    ("tax", {"max_new_tokens": 0}, "tax.max_new_tokens"),
    ("tax", {"temperature": -1}, "tax.temperature"),
    ("tax", {"adaptive": {"lr": 0}}, "tax.adaptive.lr"),
    ("tax", {"budget": float("nan")}, "tax.budget"),
    ("model", {"name_or_path": "m", "lora": {"r": 0}}, "model.lora.r"),
    ("model", {"name_or_path": "m", "lora": {"dropout": 1.0}}, "model.lora.dropout"),
    ("model", {"name_or_path": "m", "lora": {"alpha": 0}}, "model.lora.alpha"),
    ("seed", -3, "seed"),
]


@pytest.mark.parametrize("section, value, key", BAD_VALUES, ids=[f"{k}={v}" for _, v, k in BAD_VALUES])
def test_out_of_range_values_are_refused_naming_the_field(section, value, key):
    with pytest.raises(RecipeError) as e:
        parse_recipe(_raw(**{section: value}), source="r.yaml")
    assert f"'{key}" in str(e.value)


def test_defaults_and_edge_values_are_accepted():
    r = parse_recipe(_raw(optimizer={"max_grad_norm": None, "betas": [0.0, 0.0], "weight_decay": 0},
                          eval={"temperature": 0, "top_p": 1.0}, hbat={"mix_gamma": 0}))
    assert r.optimizer.max_grad_norm is None and r.eval.top_p == 1.0


def test_yaml_nan_in_a_file_names_the_line(tmp_path):
    p = _write(tmp_path, BASE + "optimizer:\n  lr: .nan\n")
    with pytest.raises(RecipeError, match=r"line 9: 'optimizer\.lr'.*finite"):
        load_recipe(p)


def test_non_utf8_recipe_names_the_line(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_bytes(BASE.encode() + b"name: caf\xe9\n")
    with pytest.raises(RecipeError, match=r"r\.yaml, line 8: not valid UTF-8"):
        load_recipe(p)
