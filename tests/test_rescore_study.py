"""benchmarks/rescore_study.py: a study's generations scored again by another reward model, win rate against the base
model's replies, as the study's own reward columns are computed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers_bench import load_benchmark
from helpers_evaluation import tiny_reward_model

from tandem.evaluation.metrics import reward_scores, reward_win_rate

PROMPTS = [[{"role": "user", "content": q}] for q in ("Name a fruit.", "Say hi.", "What is 2 + 2?")]


def load():
    return load_benchmark("rescore_study")


def gens(path: Path, outputs: list[str], prompts=PROMPTS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": p, "output": o}) + "\n" for p, o in zip(prompts, outputs)))


def test_rescored_columns_match_the_metric_on_the_same_replies(tmp_path):
    study = tmp_path / "study"
    base_out, run_out, run_t1 = ["apple", "hi", "4"], ["a pear, maybe", "hello there", "four"], ["plum", "hey", "5"]
    gens(study / "base" / "eval" / "generations.jsonl", base_out)
    gens(study / "m-s0" / "eval" / "generations.jsonl", run_out)
    gens(study / "m-s0" / "eval" / "t1-s0" / "generations.jsonl", run_t1)
    (study / "table.json").write_text(json.dumps([{"method": "base", "seed": 0, "run": str(study / "base")},
                                                  {"method": "m", "seed": 0, "run": str(study / "m-s0")}]))
    model, tok = tiny_reward_model(seed=3)
    model.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    rows = load().main([str(study), "--reward-model", str(tmp_path / "rm"), "--out", str(tmp_path / "out"), "--dtype", "float32"])
    with torch.no_grad():
        b, r, t = (reward_scores(model, tok, PROMPTS, o) for o in (base_out, run_out, run_t1))
    base_row, row = rows
    assert base_row["reward/mean"] == pytest.approx(sum(b) / 3, abs=1e-4) and "reward_win_rate/win_rate" not in base_row
    assert row["reward/mean"] == pytest.approx(sum(r) / 3, abs=1e-4)
    assert row["t1/reward/mean"] == pytest.approx(sum(t) / 3, abs=1e-4)
    assert row["reward_win_rate/win_rate"] == reward_win_rate(r, b)["win_rate"]
    assert row["t1/reward_win_rate/win_rate"] == reward_win_rate(t, b)["win_rate"]  # against the base at eval.temperature
    assert "| m | 0 |" in (tmp_path / "out" / "table.md").read_text()
    assert len(list((tmp_path / "out" / "scores").glob("*.json"))) == 4  # kept: a second call reads them


def test_other_prompts_than_the_baseline_are_refused(tmp_path):
    study = tmp_path / "study"
    gens(study / "base" / "eval" / "generations.jsonl", ["a", "b", "c"])
    gens(study / "m-s0" / "eval" / "generations.jsonl", ["a", "b", "c"], prompts=PROMPTS[::-1])
    (study / "table.json").write_text(json.dumps([{"method": "m", "seed": 0, "run": str(study / "m-s0")}]))
    model, tok = tiny_reward_model(seed=3)
    model.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    with pytest.raises(ValueError, match="not the prompts of the baseline"):
        load().rescore(study, str(tmp_path / "rm"), tmp_path / "out", "float32")
