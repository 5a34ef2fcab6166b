"""`tandem quickstart` end to end on the tiny model (the real one runs SmolLM2; see README)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tandem.cli.main import app


def test_quickstart_trains_sequential_and_hbat_and_compares(tiny_model_dir, tmp_path):
    out = tmp_path / "qs"
    res = CliRunner().invoke(app, ["quickstart", "-o", str(out), "--model", str(tiny_model_dir), "--n-train", "24", "--n-eval", "8"])
    assert res.exit_code == 0, res.output
    result = json.loads((out / "quickstart.json").read_text())
    assert list(result["scores"]) == ["base", "sequential", "hbat"]
    assert set(result["scores"]["base"]) == {"task_accuracy", "short_reply_rate", "answer_nll", "preference_win_rate"}
    for method in ("sequential", "hbat"):
        assert result["scores"][method]["answer_nll"] < result["scores"]["base"]["answer_nll"]  # SFT on the same tasks
        assert (out / method / "final" / "adapter_model.safetensors").exists()
    roles = lambda m: [s["name"] for s in json.loads((out / m / "summary.json").read_text())["stages"]]  # noqa: E731
    assert roles("sequential") == ["01-sft", "02-pref"]
    assert roles("hbat") == ["01-sft-1", "02-pref-1", "03-sft-2", "04-pref-2"]
    assert "sequential" in res.output and "hbat" in res.output
