"""Validation inside a stage (``logging.val_every``): rows at every N optimizer steps and at the stage end, on the
held-out data of data.val / val_size, without changing what the run trains."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from helpers_recipe import base_raw, with_overrides

from tandem.config.recipe import RecipeError
from tandem.pipelines.train import train


def _run(tmp_path, model_dir, files, method, every):
    r = with_overrides(base_raw(tmp_path, model_dir, files, method), {
        "logging.val_every": every, "logging.report_to": [], "checkpoint.every": 0, "checkpoint.stage_weights": False,
        "schedule.max_steps_per_stage": 5})
    train(r)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    return rows, load_file(str(tmp_path / "run" / "final" / "model.safetensors"))


@pytest.mark.parametrize("method, key", [("reward", "reward/accuracy"), ("sft", "sft/loss")])
def test_val_rows_every_n_steps_and_the_same_weights(tmp_path, tiny_model_dir, synthetic_files, method, key):
    rows, weights = _run(tmp_path / "on", tiny_model_dir, synthetic_files, method, 2)
    val = [r for r in rows if r.get("split") == "val"]
    assert [r["step"] for r in val] == [2, 4, 5]  # every 2 steps inside the stage, then the stage end
    assert [r.get("stage_step") for r in val[:2]] == [2, 4]
    assert all(key in r for r in val)
    _, plain = _run(tmp_path / "off", tiny_model_dir, synthetic_files, method, 0)
    for k, v in plain.items():
        torch.testing.assert_close(weights[k], v, atol=0, rtol=0, msg=k)  # validating leaves training as it was


def test_val_every_is_validated(tmp_path, tiny_model_dir, synthetic_files):
    with pytest.raises(RecipeError, match="logging.val_every"):
        with_overrides(base_raw(tmp_path, tiny_model_dir, synthetic_files, "sft"), {"logging.val_every": -1})
