"""benchmarks/reward_curves.py: held-out accuracy per validation and the running mean of the training batches' accuracy,
against the pairs trained on."""

from __future__ import annotations

import json

import pytest
from helpers_bench import load_benchmark


def test_curves_of_a_run_dir(tmp_path):
    (tmp_path / "recipe.yaml").write_text("batching: {mode: pack, batch_size: 4}\n")
    rows = [{"split": "train", "step": s, "accuracy": a} for s, a in ((1, 0.0), (2, 1.0), (3, 0.5))]
    rows += [{"split": "val", "step": 2, "reward/accuracy": 0.55}, {"split": "val", "step": 3, "reward/accuracy": 0.6}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = load_benchmark("reward_curves").curves(tmp_path, window=2)
    assert c["batch"] == 4
    assert c["val"] == [(8, 0.55), (12, 0.6)]
    assert c["train"] == [(4, 0.0), (8, 0.5), (12, pytest.approx(0.75))]  # mean of the last two steps
    load_benchmark("reward_curves").main([str(tmp_path), "--out", str(tmp_path / "c.png")])
    assert (tmp_path / "c.png").stat().st_size > 1000
