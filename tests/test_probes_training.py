"""The recipe's ``probe`` block: entanglement metrics land in metrics.jsonl during preference stages only."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_engine_train import read_metrics, recipe

from tandem.config.recipe import RecipeError, parse_recipe
from tandem.pipelines.train import train

PROBE_KEYS = {"probe/mean_cosine", "probe/frac_chosen_falls", "probe/frac_rejected_rises", "probe/logp_w", "probe/logp_l"}


def test_probe_metrics_in_preference_stage_rows(tmp_path, tiny_model_dir, synthetic_files):
    r = recipe(tmp_path, tiny_model_dir, synthetic_files, method="sequential",
               **{"schedule.max_steps_per_stage": 4, "logging.every": 3, "probe": {"every": 2, "pairs": 2, "params": "all"},
                  "checkpoint.every": 0, "data.val_size": 0})
    train(r)
    rows = [x for x in read_metrics(Path(r.output_dir)) if x["split"] == "train"]
    pref = [x for x in rows if x["stage"].endswith("pref")]
    sft = [x for x in rows if x["stage"].endswith("sft")]
    assert sft and not any(k.startswith("probe/") for x in sft for k in x)
    # logged at step 3 (logging.every) and at the probe steps 2 and 4 of the stage (global steps 6 and 8)
    assert [x["stage_step"] for x in pref] == [2, 3, 4]
    assert [PROBE_KEYS <= set(x) for x in pref] == [True, False, True]
    assert all(-1 <= x["probe/mean_cosine"] <= 1 and x["probe/logp_w"] < 0 for x in pref if "probe/logp_w" in x)


def test_probe_block_is_validated():
    base = {"output_dir": "x", "model": {"name_or_path": "m"}, "data": {}, "objectives": {}}
    assert parse_recipe(base).probe.every == 0
    with pytest.raises(RecipeError, match="probe.every"):
        parse_recipe({**base, "probe": {"every": -1}})
    with pytest.raises(RecipeError, match="unknown key 'probe.evry'"):
        parse_recipe({**base, "probe": {"evry": 1}})


def test_report_plots_chosen_rejected_and_probe_curves(tmp_path):
    import json

    from tandem.report import write_report
    from tandem.report.plots import plot_entanglement

    rows = [{"split": "train", "stage": "01-pref", "stage_index": 0, "step": s, "loss": 0.7,
             "chosen_logp": -10.0 - s, "rejected_logp": -11.0 - 2 * s} for s in (1, 2, 3, 4)]
    for r in rows[1::2]:
        r.update({"probe/logp_w": -9.0, "probe/logp_l": -12.0, "probe/frac_chosen_falls": 0.5,
                  "probe/frac_rejected_rises": 0.0, "probe/mean_cosine": 0.9, "probe/median_cosine": 0.95})
    assert plot_entanglement(rows[:1], tmp_path / "one.png") is not None  # chosen/rejected log-probs alone
    assert plot_entanglement([{"split": "train", "step": 1, "loss": 1.0}], tmp_path / "none.png") is None
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = write_report(run).read_text()
    assert "## Chosen vs rejected log-probs and gradient entanglement" in text
    assert (run / "report_plots" / "entanglement.png").stat().st_size > 1000
