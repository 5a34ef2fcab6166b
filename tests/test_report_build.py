"""tandem.report: run report (two stages) and compare report on synthetic dirs."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from tandem.evaluation.metrics import temperature_sweep
from tandem.report import summarize, write_report
from tandem.report.plots import stage_spans


def make_run_dir(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for step in range(1, 21):
        sft = step <= 10
        stage, idx = ("01-sft", 0) if sft else ("02-dpo", 1)
        row = {"split": "train", "stage": stage, "stage_index": idx, "step": step, "stage_step": step if sft else step - 10,
               "epoch": 0, "loss": 2.0 / step + (0 if sft else 0.5), "lr": 1e-5 * min(1, step / 3),
               "tokens_per_s": 300.0 + step}
        if not sft:
            row.update({"chosen_logp": -20 + step * 0.3, "rejected_logp": -20 - step * 0.3,
                        "rewards/accuracy": min(1.0, 0.4 + 0.05 * (step - 10)), "rewards/margin": 0.1 * (step - 10)})
        rows.append(row)
        if step % 5 == 0:
            rows.append({"split": "val", "stage": stage, "stage_index": idx, "step": step, "loss": 2.2 / step + 0.1})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"split": "tra')  # torn last line
    return d


def make_compare_dir(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    table = []
    for m, (rl, wr) in {"sft+dpo": (0.30, 0.55), "hbat": (0.33, 0.62), "merge-0.5": (0.34, 0.58)}.items():
        for seed in range(3):
            table.append({"method": m, "seed": seed, "rougeL": rl + 0.01 * seed, "reward_win_rate": wr - 0.02 * seed,
                          "perplexity": 12.0 + seed})
    (d / "table.json").write_text(json.dumps(table))
    rows = temperature_sweep(lambda t, s: {"rougeL": 0.35 - 0.1 * t + 0.01 * s, "reward": 1.0 - t + 0.05 * s},
                             [0.0, 0.25, 0.5, 0.75, 1.0], repeats=3)
    (d / "temperature_sweep.json").write_text(json.dumps(rows))
    return d


def _png_ok(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 15_000  # not an empty canvas
    from matplotlib.image import imread

    img = imread(path)
    assert img.shape[0] > 300 and img.shape[1] > 400
    assert img[..., :3].std() > 0.05  # something is drawn


def test_run_report(tmp_path):
    d = make_run_dir(tmp_path / "run")
    md_path = write_report(d)
    assert md_path == d / "report.md"
    md = md_path.read_text()
    assert "# Run: run" in md
    assert "| 0 | 01-sft | 1–10 | 0.2000 | 0.3200 |" in md  # last train loss 2/10, last val 2.2/10 + 0.1
    assert "| 1 | 02-dpo | 11–20 |" in md
    assert "![training curves](report_plots/training_curves.png)" in md
    assert "rewards/accuracy" in md and "tokens_per_s" in md
    _png_ok(d / "report_plots" / "training_curves.png")
    assert stage_spans([json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()[:-1]]) == [
        ("01-sft", 1, 10), ("02-dpo", 11, 20)]


def test_compare_report_mean_std_scatter_and_sweep(tmp_path):
    d = make_compare_dir(tmp_path / "cmp")
    out = write_report(d, out=tmp_path / "reports" / "cmp.md")
    md = out.read_text()
    s = summarize(json.loads((d / "table.json").read_text()))
    hb = s["hbat"]["rougeL"]
    assert hb["mean"] == pytest.approx(0.34) and hb["n"] == 3
    assert hb["std"] == pytest.approx(statistics.stdev([0.33, 0.34, 0.35]))
    assert s["sft+dpo"]["perplexity"]["std"] == pytest.approx(1.0)
    assert "| method | seeds | perplexity | reward_win_rate | rougeL |" in md
    assert "| hbat | 3 | 13.0000 ± 1.0000 | 0.6000 ± 0.0200 | 0.3400 ± 0.0100 |" in md
    assert "## reward_win_rate vs rougeL" in md
    _png_ok(tmp_path / "reports" / "cmp_plots" / "methods_scatter.png")
    _png_ok(tmp_path / "reports" / "cmp_plots" / "temperature_sweep.png")
    assert "![temperature_sweep](cmp_plots/temperature_sweep.png)" in md

    # configurable keys, and a clear error for a missing one
    write_report(d, out=tmp_path / "r2.md", x_key="perplexity", y_key="rougeL")
    assert "## rougeL vs perplexity" in (tmp_path / "r2.md").read_text()
    with pytest.raises(ValueError, match="'ifeval' is not in table.json"):
        write_report(d, out=tmp_path / "r3.md", x_key="ifeval")


def test_report_errors_and_eval_results(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a run dir"):
        write_report(tmp_path)
    d = make_run_dir(tmp_path / "run")
    (d / "eval").mkdir()
    (d / "eval" / "results.json").write_text(json.dumps({"model": "m", "metrics": {"rouge": {"rougeL": 0.25}}}))
    md = write_report(d).read_text()
    assert "| `run/eval/results.json` | rouge/rougeL | 0.2500 |" in md or "| `eval/results.json` | rouge/rougeL | 0.2500 |" in md
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "table.json").write_text(json.dumps([{"seed": 0, "x": 1}]))
    with pytest.raises(ValueError, match=r"table.json: .*'method'"):
        write_report(bad)


def test_runs_overlay_report(tmp_path):
    import json as _json

    from typer.testing import CliRunner

    from tandem.cli.main import app

    for name, slope in (("a", 1.0), ("b", -1.0)):
        d = tmp_path / name
        d.mkdir()
        rows = [{"split": "train", "step": s, "chosen_logp": -10 + slope * s, "rejected_logp": -12.0} for s in (1, 2, 3)]
        (d / "metrics.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "cmp.md"
    res = CliRunner().invoke(app, ["report", str(tmp_path / "a"), "--with", str(tmp_path / "b"), "--keys",
                                   "chosen_logp,rejected_logp,missing", "-o", str(out)])
    assert res.exit_code == 0, res.output
    md = out.read_text()
    assert "| a | -9.0000 → -7.0000 | -12.0000 → -12.0000 | - |" in md and "| b | -11.0000 → -13.0000 |" in md
    assert (tmp_path / "cmp_plots" / "runs_overlay.png").stat().st_size > 0
