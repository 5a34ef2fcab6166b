"""Recipe fields of issue 15 (tandem.config.recipe): data source skip/columns/loss_on/streaming, data.chat_template,
model.gradient_checkpointing/attn_implementation/quantization, logging.report_to/project, eval.bartscore_model."""

from __future__ import annotations

import pytest

from tandem.config.recipe import RecipeError, dump_recipe, load_recipe, parse_recipe

BASE = """\
output_dir: runs/x
model:
  name_or_path: some/model
data:
  sft: {source: a.jsonl}
objectives:
  sft: {name: sft}
"""


def _load(tmp_path, text, overrides=None):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return load_recipe(p, overrides)


def test_defaults_change_nothing(tmp_path):
    r = _load(tmp_path, BASE)
    m, s = r.model, r.data.sft
    assert (m.gradient_checkpointing, m.attn_implementation, m.quantization) == (False, "auto", None)
    assert (s.skip, s.columns, s.loss_on, s.streaming, r.data.chat_template) == (0, None, "last", False, None)
    assert (r.logging.report_to, r.logging.project, r.eval.bartscore_model) == (["tensorboard"], None, None)


def test_new_fields_parse_and_round_trip(tmp_path):
    text = BASE.replace("sft: {source: a.jsonl}", "sft: {source: q.csv, columns: {prompt: question, response: answer}, "
                        "loss_on: all_assistant, streaming: true, skip: 10}\n  chat_template: chatml")
    text = text.replace("name_or_path: some/model", "name_or_path: some/model\n  gradient_checkpointing: true\n"
                        "  attn_implementation: sdpa\n  quantization: 4bit\n  lora: {r: 8}")
    text += "logging: {report_to: [wandb, mlflow], project: tldr}\neval: {metrics: [rouge, bartscore], bartscore_model: facebook/bart-large-cnn}\n"
    r = _load(tmp_path, text)
    assert r.data.sft.columns == {"prompt": "question", "response": "answer"} and r.data.sft.skip == 10
    assert (r.model.quantization, r.model.attn_implementation, r.model.gradient_checkpointing) == ("4bit", "sdpa", True)
    assert r.logging.report_to == ["wandb", "mlflow"] and r.logging.project == "tldr"
    again = parse_recipe(__import__("yaml").safe_load(dump_recipe(r)))
    assert again == r


@pytest.mark.parametrize("impl", ["auto", "eager", "sdpa", "flash_attention_2", "flex_attention", "kernels-community/flash-attn"])
def test_attn_implementation_values(tmp_path, impl):
    assert _load(tmp_path, BASE, [f"model.attn_implementation={impl}"]).model.attn_implementation == impl


def test_unknown_attn_implementation_names_key_and_choices(tmp_path):
    with pytest.raises(RecipeError, match=r"model\.attn_implementation.*unknown attention implementation 'flash'.*sdpa"):
        _load(tmp_path, BASE.replace("some/model", "some/model\n  attn_implementation: flash"))


def test_quantization_needs_lora_and_no_gguf(tmp_path):
    with pytest.raises(RecipeError, match=r"r\.yaml, line 2: 'model': .*quantization: 4bit \(QLoRA\).*add a model\.lora block"):
        _load(tmp_path, BASE.replace("some/model", "some/model\n  quantization: 4bit"))
    with pytest.raises(RecipeError, match="quantization and gguf_file cannot be combined"):
        _load(tmp_path, BASE, ["model.quantization=8bit", "model.lora.r=4", "model.gguf_file=m.gguf"])
    with pytest.raises(RecipeError, match=r"model\.quantization"):
        _load(tmp_path, BASE, ["model.quantization=3bit", "model.lora.r=4"])
    assert _load(tmp_path, BASE, ["model.quantization=8bit", "model.lora.r=4"]).model.quantization == "8bit"


def test_loss_on_all_assistant_is_for_sft_data_only(tmp_path):
    text = BASE.replace("sft: {source: a.jsonl}", "sft: {source: a.jsonl}\n  preference: {source: p.jsonl, loss_on: all_assistant}")
    with pytest.raises(RecipeError, match=r"'data': .*preference\.loss_on.*applies to data\.sft only"):
        _load(tmp_path, text)
    with pytest.raises(RecipeError, match=r"data\.sft\.loss_on"):
        _load(tmp_path, BASE, ["data.sft.loss_on=everything"])


def test_column_map_typo_is_caught_when_the_recipe_loads(tmp_path):
    text = BASE.replace("sft: {source: a.jsonl}", "sft:\n    source: a.jsonl\n    columns: {promt: question}")
    with pytest.raises(RecipeError, match=r"r\.yaml, line 7: 'data\.sft\.columns'.*column map names \['promt'\]"):
        _load(tmp_path, text)


def test_report_to_forms(tmp_path):
    assert _load(tmp_path, BASE + "logging: {tensorboard: false}\n").logging.report_to == []
    assert _load(tmp_path, BASE + "logging: {report_to: none}\n").logging.report_to == []
    assert _load(tmp_path, BASE + "logging: {report_to: wandb}\n").logging.report_to == ["wandb"]
    assert _load(tmp_path, BASE + "logging: {report_to: all}\n").logging.report_to == ["tensorboard", "wandb", "mlflow"]
    with pytest.raises(RecipeError, match=r"logging\.report_to\.0"):
        _load(tmp_path, BASE + "logging: {report_to: [comet]}\n")
    with pytest.raises(RecipeError, match="a tracker is named twice"):
        _load(tmp_path, BASE + "logging: {report_to: [wandb, wandb]}\n")


def test_bartscore_metric_needs_its_model(tmp_path):
    with pytest.raises(RecipeError, match=r"metric 'bartscore' needs eval\.bartscore_model"):
        _load(tmp_path, BASE + "eval: {metrics: [rouge, bartscore]}\n")
