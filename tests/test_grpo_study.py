"""GRPO methods in ``tandem compare`` and ``tandem study`` (tiny model, one seed, one step per stage): every row trains
with its method, the table has a row per method, the budget column counts prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers_entry import cli_app
from helpers_grpo import grpo_block
from helpers_recipe import base_raw, with_overrides
from typer.testing import CliRunner

from tandem.config.recipe import dump_recipe


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def recipe(d: Path, model_dir, files, method: str, name: str):
    over = {"name": name, "schedule.parts": 2, "schedule.max_steps_per_stage": 1, "checkpoint.every": 0,
            "logging.tensorboard": False, "data.val_size": 4, "batching.batch_size": 2,
            "data.sft": {"source": str(files["sft"]), "limit": 12},
            "data.preference": {"source": str(files["preference"]), "limit": 12},
            "objectives.grpo": grpo_block(max_completion_length=4, num_generations=2),
            "eval.data": {"source": str(files["sft"]), "skip": 40, "limit": 2}, "eval.metrics": ["rouge"],
            "eval.max_new_tokens": 4, "eval.temperature": 0.0}
    return with_overrides(base_raw(d, model_dir, files, method), over)


def test_grpo_methods_run_in_compare_and_study(tmp_path, tiny_model_dir, synthetic_files):
    path = tmp_path / "recipe.yaml"
    path.write_text(dump_recipe(recipe(tmp_path, tiny_model_dir, synthetic_files, "hbat", "cmp")))
    res = CliRunner().invoke(cli_app, ["compare", str(path), "--methods", "sequential-grpo,hbat-grpo", "--seeds", "0",
                                       "-o", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    table = json.loads((tmp_path / "cmp" / "table.json").read_text())
    rows = {r["method"]: r for r in (table["rows"] if isinstance(table, dict) else table)}
    assert {"sequential-grpo", "hbat-grpo"} <= set(rows)
    for m in ("sequential-grpo", "hbat-grpo"):
        metrics = (tmp_path / "cmp" / f"{m}-s0" / "metrics.jsonl").read_text().splitlines()
        assert any("rewards/count_e/mean" in x for x in metrics)
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    for stem, method in {"seq": "sequential-grpo", "alt": "hbat-grpo"}.items():
        (study_dir / f"{stem}.yaml").write_text(dump_recipe(recipe(study_dir, tiny_model_dir, synthetic_files, method,
                                                                   f"study-{stem}")))
    res = CliRunner().invoke(cli_app, ["study", str(study_dir), "--seeds", "0", "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    for stem in ("seq", "alt"):
        summary = json.loads((tmp_path / "out" / f"{stem}-s0" / "summary.json").read_text())
        assert summary["method"] in ("sequential-grpo", "hbat-grpo") and summary["budget"]["preference"] > 0
