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
    assert set(result["scores"]["base"]) == {"pass_rate", "short_reply_rate", "preferred_style_rate",
                                                  "answer_nll", "preference_win_rate"}
    for method in ("sequential", "hbat"):
        assert result["scores"][method]["answer_nll"] < result["scores"]["base"]["answer_nll"]  # SFT on the same tasks
        assert (out / method / "final" / "adapter_model.safetensors").exists()
    roles = lambda m: [s["name"] for s in json.loads((out / m / "summary.json").read_text())["stages"]]  # noqa: E731
    assert roles("sequential") == ["01-sft", "02-pref"]
    assert roles("hbat") == ["01-sft-1", "02-pref-1", "03-sft-2", "04-pref-2"]
    assert "sequential" in res.output and "hbat" in res.output


def test_quickstart_preference_data_conflicts_with_the_tasks(tmp_path):
    """The preference pairs prefer a friendly wrong reply over the correct answer: the preference stage has a cost
    the table can show (issue 14 part 6). The data is the conflict benchmark's (issue 25): same generator, checkers."""
    from tandem.data.conflict.checks import friendly, passes
    from tandem.demos.quickstart import build_data

    paths = build_data(tmp_path, n_train=16, n_eval=4, seed=0)
    for path in (paths["preference"], paths["eval_pairs"]):
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        assert all(friendly(r["chosen"]) and not friendly(r["rejected"]) for r in rows)
        assert not any(passes(r["check"], r["chosen"]) for r in rows)
        assert all(passes(r["check"], r["rejected"]) for r in rows)
    tasks = [json.loads(x) for x in paths["eval_tasks"].read_text().splitlines()]
    assert len(tasks) == 4 and all(passes(t["check"], t["reference"]) for t in tasks)
