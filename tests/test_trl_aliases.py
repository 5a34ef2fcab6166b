"""TRL's vocabulary through the real CLI (table-driven): a recipe written with TRL's option names trains, with one log
line per alias naming tandem's field; a typo gets a close-match hint; every check runs before a directory exists;
plain ``text`` rows train as continued pre-training; ``tandem data inspect --columns/--role``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tandem.cli.main import app
from tandem.config.recipe import SCHEDULERS

ENV = {"COLUMNS": "400"}  # one log record = one line


def invoke(args: list[str]):
    return CliRunner().invoke(app, args, env=ENV)


def trl_recipe(tmp_path: Path, model_dir: Path, pref: Path, **extra) -> dict:
    """A DPO recipe as a TRL user writes it: DPOConfig's flat names, no objectives block."""
    return {"output_dir": str(tmp_path / "run"), "model_name_or_path": str(model_dir), "method": "dpo",
            "data": {"preference": {"source": str(pref)}},
            "learning_rate": 1e-3, "num_train_epochs": 1, "max_steps": 4, "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 2, "logging_steps": 1, "warmup_steps": 2, "lr_scheduler_type": "linear",
            "max_grad_norm": 0.5, "weight_decay": 0.01, "save_steps": 2, "save_total_limit": 1, "report_to": "none",
            "max_length": 64, "beta": 0.2, "bf16": False, "gradient_checkpointing": False, "seed": 3,
            "logging": {"progress": False}, "precision": "fp32", **extra}


# TRL name -> (the log line says, tandem field, value in the resolved recipe.yaml)
ALIASES = [
    ("model_name_or_path", "model_name_or_path is tandem's model.name_or_path", "model.name_or_path", None),
    ("method", "method is tandem's schedule.method", "schedule.method", "dpo"),
    ("learning_rate", "learning_rate is tandem's optimizer.lr", "optimizer.lr", 1e-3),
    ("num_train_epochs", "num_train_epochs is tandem's schedule.epochs", "schedule.epochs", 1.0),
    ("max_steps", "max_steps is tandem's schedule.max_steps", "schedule.max_steps", 4),
    ("gradient_accumulation_steps", "gradient_accumulation_steps is tandem's batching.grad_accum", "batching.grad_accum", 2),
    ("per_device_train_batch_size", "per_device_train_batch_size 2 is tandem's batching.batch_size 4 (= 2 per device x 1 "
     "process x 2 grad_accum", "batching.batch_size", 4),
    ("logging_steps", "logging_steps is tandem's logging.every", "logging.every", 1),
    ("warmup_steps", "warmup_steps is tandem's optimizer.warmup_steps", "optimizer.warmup_steps", 2),
    ("lr_scheduler_type", "lr_scheduler_type is tandem's optimizer.scheduler", "optimizer.scheduler", "linear"),
    ("max_grad_norm", "max_grad_norm is tandem's optimizer.max_grad_norm", "optimizer.max_grad_norm", 0.5),
    ("weight_decay", "weight_decay is tandem's optimizer.weight_decay", "optimizer.weight_decay", 0.01),
    ("save_steps", "save_steps is tandem's checkpoint.every", "checkpoint.every", 2),
    ("save_total_limit", "save_total_limit is tandem's checkpoint.keep", "checkpoint.keep", 1),
    ("report_to", "report_to is tandem's logging.report_to", "logging.report_to", []),
    ("max_length", "max_length is tandem's data.max_length", "data.max_length", 64),
    ("beta", "beta is tandem's objectives.preference.beta", "objectives.preference.beta", 0.2),
    ("bf16", "bf16: False sets nothing (tandem's default stays)", "precision", "fp32"),
    ("gradient_checkpointing", "gradient_checkpointing is tandem's model.gradient_checkpointing",
     "model.gradient_checkpointing", False),
]


@pytest.fixture(scope="module")
def trl_run(tmp_path_factory, tiny_model_dir, synthetic_files):
    tmp = tmp_path_factory.mktemp("trl")
    path = tmp / "dpo.yaml"
    path.write_text(yaml.safe_dump(trl_recipe(tmp, tiny_model_dir, synthetic_files["preference"])))
    res = invoke(["train", str(path), "--no-progress"])
    return res, tmp / "run"


def _get(d: dict, dotted: str):
    for p in dotted.split("."):
        d = d[p]
    return d


@pytest.mark.parametrize("name,line,field,value", ALIASES, ids=[a[0] for a in ALIASES])
def test_a_trl_recipe_trains_with_one_line_per_alias(trl_run, name, line, field, value):
    res, run = trl_run
    assert res.exit_code == 0, res.output
    mentions = [ln for ln in res.output.splitlines() if f": {name}" in ln and "tandem's" in ln]
    assert len(mentions) == 1, mentions
    assert line in mentions[0]
    resolved = yaml.safe_load((run / "recipe.yaml").read_text())
    if value is not None:
        assert _get(resolved, field) == value


def test_the_trl_run_logs_the_rate_each_step_used(trl_run):
    res, run = trl_run
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if r["split"] == "train"]
    # linear warm-up over 2 steps then linear decay to 0 at step 4: the rates steps 1..4 used
    assert lrs == pytest.approx([0.0, 5e-4, 1e-3, 5e-4])
    assert json.loads((run / "summary.json").read_text())["global_steps"] == 4
    assert not (run / "stages" / "start.safetensors").exists()  # one stage: per-stage weights are opt-in


# a typo and what the one-line error says (all before the model loads or a directory is created)
TYPOS = [
    ({"schedule": {"max_step": 3}}, [], "unknown key 'schedule.max_step'; did you mean 'schedule.max_steps'?"),
    ({"lr": 1e-5}, [], "unknown key 'lr'; did you mean 'optimizer.lr'?"),
    ({"optimizer": {"learning_rat": 1e-5}}, [], "did you mean 'optimizer.lr'?"),
    ({}, ["--set", "optimizer.schedular=linear"], "--set optimizer.schedular=linear: unknown key "
     "'optimizer.schedular'; did you mean 'optimizer.scheduler'?"),
    ({"lr_scheduler_type": "cosin"}, [], "'optimizer.scheduler': Input should be 'linear', 'cosine'"),
    ({"method": "dpoo"}, [], "unknown method 'dpoo'; did you mean 'dpo'?"),
    ({"eval_strategy": "steps"}, [], "TRL's eval_strategy has no tandem equivalent"),
    ({"batching": {"batch_size": 8}}, [], "per_device_train_batch_size and batching.batch_size are both given; "
     "tandem's batching.batch_size is the global batch of one optimizer step = per_device_train_batch_size x "
     "processes x batching.grad_accum"),
    ({"optimizer": {"lr": 1e-4}}, [], "learning_rate and optimizer.lr are both given"),
    ({"warmup_ratio": 0.1}, [], "warmup_ratio and warmup_steps are both set; keep one"),
]


@pytest.mark.parametrize("extra,flags,message", TYPOS, ids=[t[2][:40] for t in TYPOS])
def test_a_typo_gets_its_hint_in_one_line_before_anything_is_written(tmp_path, tiny_model_dir, synthetic_files,
                                                                     extra, flags, message):
    raw = trl_recipe(tmp_path, tiny_model_dir, synthetic_files["preference"])
    for k, v in extra.items():
        raw[k] = {**raw[k], **v} if isinstance(v, dict) and isinstance(raw.get(k), dict) else v
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    res = invoke(["train", str(path), "--no-progress", *flags])
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], res.output
    assert "Traceback" not in res.output and not (tmp_path / "run").exists()


def test_trl_names_in_set_flags(tmp_path, tiny_model_dir, synthetic_files):
    raw = trl_recipe(tmp_path, tiny_model_dir, synthetic_files["preference"], max_steps=1)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    res = invoke(["train", str(path), "--no-progress", "--set", "learning_rate=2e-3", "--set", "optimizer.adam_epsilon=1e-6"])
    assert res.exit_code == 0, res.output
    assert "--set learning_rate: learning_rate is tandem's optimizer.lr" in res.output
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert saved["optimizer"]["lr"] == 2e-3 and saved["optimizer"]["eps"] == 1e-6


def test_every_scheduler_name_is_one_transformers_knows():
    from transformers import SchedulerType

    assert set(SCHEDULERS) <= {s.value for s in SchedulerType}


def test_a_data_error_leaves_no_directory_and_the_corrected_rerun_trains(tmp_path, tiny_model_dir):
    from conftest import write_jsonl

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "chosen": "b"}] * 4)
    raw = trl_recipe(tmp_path, tiny_model_dir, bad, max_steps=1)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    res = invoke(["train", str(path), "--no-progress"])
    assert res.exit_code == 2 and "rejected" in res.output and not (tmp_path / "run").exists()
    write_jsonl(bad, [{"prompt": f"q{i}", "chosen": "yes", "rejected": "no"} for i in range(8)])
    assert invoke(["train", str(path), "--no-progress"]).exit_code == 0  # no --overwrite needed


def test_plain_text_rows_train_as_continued_pretraining(tmp_path, tiny_model_dir):
    from conftest import write_jsonl

    texts = write_jsonl(tmp_path / "corpus.jsonl", [{"text": f"Paragraph {i}: the cat sat on the mat."} for i in range(12)])
    raw = {"output_dir": str(tmp_path / "run"), "model": {"name_or_path": str(tiny_model_dir)},
           "data": {"sft": {"source": str(texts)}, "max_length": 32}, "max_steps": 2,
           "batching": {"batch_size": 4}, "precision": "fp32", "logging": {"progress": False}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    res = invoke(["train", str(path), "--no-progress"])  # detected: {"text": ...} rows, no format needed
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "run" / "data-sft.json").read_text())
    assert info["load"]["format"] == "text" and info["train"] == 12
    res = invoke(["data", "inspect", str(texts), "--role", "pretrain"])
    assert res.exit_code == 0 and "text (continued pre-training" in res.output


def test_plain_text_is_accepted_as_data_pretrain(tmp_path, tiny_model_dir, synthetic_files, one_thread):
    import tandem

    run = tandem.train({"method": "rlhf+pt", "max_steps": 2, "batching": {"batch_size": 4}, "max_length": 64,
                        "precision": "fp32", "logging": {"progress": False}, "output_dir": str(tmp_path / "pt")},
                       model=str(tiny_model_dir),
                       data={"sft": synthetic_files["sft"], "preference": synthetic_files["preference"],
                             "pretrain": [f"Plain text number {i} about cats and mats." for i in range(8)]})
    info = json.loads((run.dir / "data-pretrain.json").read_text())
    assert info["load"]["format"] == "text" and info["train"] == 8
    assert any("aux/loss" in r for r in run.metrics if r["split"] == "train")  # the LM term trained


def test_data_inspect_with_a_column_map_and_a_role(tmp_path):
    from conftest import write_jsonl

    src = write_jsonl(tmp_path / "qa.jsonl", [{"question": f"q{i}?", "answer": f"a{i}"} for i in range(5)])
    res = invoke(["data", "inspect", str(src), "--columns", "prompt=question,response=answer", "--role", "sft"])
    assert res.exit_code == 0, res.output
    assert "prompt_response (sft)" in res.output and "q0?" in res.output
    res = invoke(["data", "inspect", str(src), "--columns", "prompt=question,response=answer", "--role", "preference"])
    assert res.exit_code == 2 and res.output.count("error:") == 1
    res = invoke(["data", "inspect", str(src), "--columns", "prompt"])
    assert res.exit_code == 2 and "expected field=column pairs" in res.output



def test_compare_checks_metric_names_before_training(tmp_path, tiny_model_dir, synthetic_files):
    raw = trl_recipe(tmp_path, tiny_model_dir, synthetic_files["preference"], eval={"metrics": ["roug"]})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    res = invoke(["compare", str(path), "--methods", "dpo", "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 2 and "unknown metric(s) ['roug']" in res.output
    assert not (tmp_path / "cmp").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("block,message", [
    ({"objectives": {"preference": {"name": "dpo", "bta": 0.1}}}, "did you mean 'beta'?"),
    ({"method": "hbat", "hbat": {"ewc": {"lamda": 1.0}}}, "did you mean 'lam'?"),
])
def test_a_misspelt_objective_or_regularizer_argument_gets_its_hint(tmp_path, tiny_model_dir, synthetic_files, block,
                                                                    message):
    raw = trl_recipe(tmp_path, tiny_model_dir, synthetic_files["preference"], **block)
    if block.get("method") == "hbat":
        raw["data"]["sft"] = {"source": str(synthetic_files["sft"])}
    raw.pop("beta")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    res = invoke(["train", str(path), "--no-progress"])
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "run").exists()
