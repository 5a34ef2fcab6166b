"""`tandem quickstart` end to end on the tiny model (the real one runs SmolLM2; see README)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tandem.cli.main import app


def test_quickstart_trains_and_writes_before_after(tiny_model_dir, tmp_path):
    out = tmp_path / "qs"
    res = CliRunner().invoke(app, ["quickstart", "-o", str(out), "--model", str(tiny_model_dir), "--n-train", "24", "--n-eval", "8"])
    assert res.exit_code == 0, res.output
    result = json.loads((out / "quickstart.json").read_text())
    assert set(result["before"]) == {"task_accuracy", "short_reply_rate", "answer_nll", "preference_win_rate"}
    assert result["after"]["answer_nll"] < result["before"]["answer_nll"]  # SFT on the same task families
    summary = json.loads((out / "summary.json").read_text())
    assert [s["role"] for s in summary["stages"]] == ["sft", "preference"]
    assert (out / "final" / "adapter_model.safetensors").exists()
