"""`tandem tax` end to end on tiny models: candidates, Pareto front, pick under budget, resume, CLI errors."""

from __future__ import annotations

import json

import pytest
import torch
from helpers_evaluation import tax_inputs
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from tandem.cli.main import app
from tandem.merging.tax import tax_of


def test_tax_of_formulas():
    assert tax_of("perplexity", 12.0, 10.0) == pytest.approx(0.2)
    assert tax_of("mc", 0.5, 0.75) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="tax_metric"):
        tax_of("bleu", 1.0, 1.0)


@pytest.fixture
def setup(tiny_model_dir, tmp_path, synthetic_files):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tuned_dir = tmp_path / "tuned"
    torch.manual_seed(1)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.05 * torch.randn_like(p))
    base.save_pretrained(tuned_dir)
    tax_inputs(tmp_path)  # tmp_path/rm, tmp_path/heldout.txt
    recipe = tmp_path / "tax.yaml"
    recipe.write_text(f"""
output_dir: {tmp_path / 'run'}
model: {{name_or_path: {tiny_model_dir}}}
data: {{}}
objectives: {{}}
tax:
  tuned: {tuned_dir}
  out: {tmp_path / 'tax'}
  groups: block2
  sweep: [0.0, 0.5, 1.0]
  trials: 4
  prompts: {{source: {synthetic_files['sft']}, limit: 4}}
  reward_model: {tmp_path / 'rm'}
  heldout_text: {tmp_path / 'heldout.txt'}
  budget: 1.0e9
  max_new_tokens: 4
  adaptive: {{top_k: 2, steps: 3}}
""")
    return recipe, tmp_path


def test_tax_writes_front_pick_and_resumes(setup):
    recipe, tmp = setup
    res = CliRunner().invoke(app, ["tax", str(recipe), "--no-progress"])
    assert res.exit_code == 0, res.output
    out = tmp / "tax"
    summary = json.loads((out / "summary.json").read_text())
    kinds = [p["kind"] for p in summary["points"]]
    assert kinds == ["global"] * 3 + ["group"] * 4 + ["adaptive"]
    assert summary["points"][0]["tax"] == pytest.approx(0.0)  # alpha 0 is theta_0
    assert summary["points"][0]["reward"] == pytest.approx(summary["base_reward"])
    assert summary["front"] and all(summary["points"][i]["on_front"] for i in summary["front"])
    best = max(summary["points"], key=lambda p: (p["reward"], -p["tax"]))
    assert summary["points"][summary["pick"]]["reward"] == pytest.approx(best["reward"])  # budget admits all
    assert abs(sum(summary["points"][-1]["alphas"]) / 2 - 0.5) < 1e-6  # adaptive ratios keep their mean
    for f in ("table.md", "pareto.png", "candidates.jsonl"):
        assert (out / f).stat().st_size > 0
    AutoModelForCausalLM.from_pretrained(out / "picked")
    n_scored = len((out / "candidates.jsonl").read_text().splitlines())
    # refuses to overwrite; --resume rescoring nothing gives the same points
    assert CliRunner().invoke(app, ["tax", str(recipe), "--no-progress"]).exit_code == 2
    res = CliRunner().invoke(app, ["tax", str(recipe), "--no-progress", "--resume"])
    assert res.exit_code == 0, res.output
    assert len((out / "candidates.jsonl").read_text().splitlines()) == n_scored
    again = json.loads((out / "summary.json").read_text())
    assert [p["reward"] for p in again["points"]] == [p["reward"] for p in summary["points"]]


def test_tax_needs_a_reward_model(setup):
    recipe, _ = setup
    res = CliRunner().invoke(app, ["tax", str(recipe), "--set", "tax.reward_model=null", "--overwrite"])
    assert res.exit_code == 2 and "reward_model" in res.output
