"""The online conflict study's shipped recipes (recipes/conflict-grpo) run end to end on a tiny model: GRPO stages
read the pairs' prompts with their check and wrong columns, the pairs' labeller is the reward (the checker and
the style logged beside it), and the questions are answered, (a, online) paired within the run."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tandem.cli.main import app
from tandem.data.conflict import make, write

pytestmark = pytest.mark.slow
RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "conflict-grpo"


def test_the_online_conflict_study_runs_and_answers_its_questions(tmp_path):
    from tandem.models.tiny import make_tiny_llama

    rows, meta = make(rho=1.0, seed=0, sizes={"sft": 16, "pairs": 16, "val": 4, "test": 6, "test_pairs": 4})
    bench = write(tmp_path / "bench", rows, meta)
    texts = [r["prompt"] + " " + r["response"] for r in rows["sft"]] + [p["chosen"] for p in rows["pairs"]]
    model = make_tiny_llama(tmp_path / "model", texts, seed=0)
    study = tmp_path / "recipes"
    shutil.copytree(RECIPES, study)
    questions = yaml.safe_load((study / "_contrasts.yaml").read_text())
    questions["frontier"]["early_stop"]["at"] = [0, 0.5]
    (study / "_contrasts.yaml").write_text(yaml.safe_dump(questions))
    sets = {"model.name_or_path": model, "data.sft.source": bench / "sft.jsonl", "data.preference.source": bench / "pairs.jsonl",
            "data.preference.limit": 8, "eval.data.source": bench / "test.jsonl", "checkpoint.every": 1,
            "eval.max_new_tokens": 6, "batching.batch_size": 4, "precision": "fp32", "data.max_length": 64,
            "objectives.grpo.max_completion_length": 6, "logging.progress": "false"}
    args = ["study", str(study), "--seeds", "0", "-o", str(tmp_path / "out")]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    out = tmp_path / "out"
    table = {row["method"] for row in json.loads((out / "table.json").read_text())}
    assert {"sequential-grpo", "hbat-grpo-no-ewc", "hbat-grpo", "sequential-grpo@0", "sequential-grpo@0.5"} <= table
    res = json.loads((out / "contrasts.json").read_text())
    assert {(x["a"], x["b"]) for x in res} == {("sequential-grpo@0", "sequential-grpo"),
                                               ("hbat-grpo-no-ewc", "sequential-grpo"), ("hbat-grpo", "hbat-grpo-no-ewc")}
    steps = [json.loads(x) for x in open(out / "sequential-grpo-s0" / "metrics.jsonl")]
    grpo = [s for s in steps if s.get("split") == "train" and s.get("role") == "preference"]
    assert grpo, "no GRPO step logged"
    for s in grpo:  # the labeller is the reward (weight 1); the checker and the style are logged beside it
        assert 0 <= s["rewards/conflict_labeller/mean"] <= 2 and s["reward"] == pytest.approx(s["rewards/conflict_labeller/mean"])
        assert 0 <= s["rewards/conflict_pass/mean"] <= 1 and 0 <= s["rewards/conflict_style/mean"] <= 1
