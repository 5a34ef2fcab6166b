"""``tandem compare``: several methods x seeds on one recipe, scored identically; table.json, table.md, report.

Two methods (sequential, hbat) x two seeds on the tiny model, one optimizer step per stage. Checks the rows
against each run's own summary.json and recipe.yaml, the mean ± std cells against a hand computation, the
report and its scatter, ``--resume`` (finished runs are not retrained, a missing one is), and that an unknown
method fails before anything is trained.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest
import yaml
from helpers_entry import cli_app, compare
from helpers_recipe import base_raw, with_overrides
from typer.testing import CliRunner

from tandem.config.recipe import dump_recipe

METHODS = ["sequential", "hbat"]
SEEDS = [0, 1]
STAGES = {"sequential": 2, "hbat": 4}  # stages with schedule.parts = 2; one step each
X, Y = "sft/loss", "preference/rewards/accuracy"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


def write_recipe(tmp: Path, model_dir, files) -> Path:
    heldout = tmp / "heldout.txt"
    heldout.write_text("The quick brown fox jumps over the lazy dog.\n\nWhat is 2 + 3? The answer is 5.\n")
    r = with_overrides(base_raw(tmp, model_dir, files, "sequential"), {
        "schedule.parts": 2, "schedule.max_steps_per_stage": 1, "checkpoint.every": 0, "logging.tensorboard": False,
        "data.val_size": 4, "eval.metrics": ["perplexity"], "eval.heldout_text": str(heldout)})
    path = tmp / "recipe.yaml"
    path.write_text(dump_recipe(r))
    return path


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_model_dir, synthetic_files):
    tmp = tmp_path_factory.mktemp("compare")
    recipe = write_recipe(tmp, tiny_model_dir, synthetic_files)
    out = tmp / "cmp"
    rows = compare(recipe, METHODS, SEEDS, out, [], False, X, Y)
    return recipe, out, rows


def trained(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["method"] != "base"]


def test_the_base_model_is_the_first_row_on_the_same_evaluation(compared, tiny_model_dir):
    _, out, rows = compared
    base = rows[0]
    assert base["method"] == "base" and base["steps"] == 0 and base["run"] == str(out / "base")
    res = json.loads((out / "base" / "eval" / "results.json").read_text())
    assert base["perplexity/perplexity"] == res["metrics"]["perplexity"]["perplexity"] > 0
    assert all(r["perplexity/perplexity"] != base["perplexity/perplexity"] for r in trained(rows))  # training moved it


def test_rows_are_one_per_method_and_seed_scored_from_each_run(compared):
    recipe, out, rows = compared
    assert json.loads((out / "table.json").read_text()) == rows
    rows = trained(rows)
    assert [(r["method"], r["seed"]) for r in rows] == [(m, s) for m in METHODS for s in SEEDS]
    base = yaml.safe_load(recipe.read_text())
    for row in rows:
        run = Path(row["run"])
        assert run == out / f"{row['method']}-s{row['seed']}"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["method"] == row["method"]
        assert row["steps"] == summary["global_steps"] == STAGES[row["method"]]
        # the examples each objective trained on (the budget) are in the table
        assert summary["budget"] and {f"budget/{k}": v for k, v in summary["budget"].items()}.items() <= row.items()
        # the score is the run's final validation, measured the same way for every method
        for k, v in summary["final_val"].items():
            assert row[k] == v
        assert {X, Y} <= set(row)
        # eval.metrics ran on the run's final model
        res = json.loads((run / "eval" / "results.json").read_text())
        assert row["perplexity/perplexity"] == res["metrics"]["perplexity"]["perplexity"] > 0
        # only schedule.method, seed and output_dir differ from the shared recipe
        used = yaml.safe_load((run / "recipe.yaml").read_text())
        assert (used["schedule"]["method"], used["seed"], used["output_dir"]) == (row["method"], row["seed"], str(run))
        for key in ("model", "data", "batching", "optimizer", "objectives", "hbat", "eval"):
            assert used[key] == base[key], key
        assert {k: v for k, v in used["schedule"].items() if k != "method"} == \
               {k: v for k, v in base["schedule"].items() if k != "method"}
    # the seed is applied: two seeds of one method do not train the same model
    a, b = (json.loads((out / f"hbat-s{s}" / "summary.json").read_text())["final_val"] for s in SEEDS)
    assert a != b


def test_table_md_has_mean_and_std_per_method(compared):
    _, out, rows = compared
    lines = (out / "table.md").read_text().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[0] == "method" and X in header and Y in header and "steps" in header
    assert "seed" not in header
    body = {ln.strip("|").split("|")[0].strip(): [c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]}
    assert list(body) == ["base", *METHODS]
    assert body["base"][header.index("steps")] == "0"  # one row: the value, no "± 0"
    for method in METHODS:
        vals = [r[X] for r in rows if r["method"] == method]
        want = f"{statistics.fmean(vals):.4g} ± {statistics.stdev(vals):.2g}"
        assert body[method][header.index(X)] == want
        assert body[method][header.index("steps")] == f"{STAGES[method]:.4g} ± 0"


def test_report_and_plots_exist(compared):
    _, out, _ = compared
    report = (out / "report.md").read_text()
    assert "Method comparison" in report and "mean ± std" in report
    assert all(f"| {m} | {len(SEEDS)} |" in report for m in METHODS) and "| base | 1 |" in report
    assert f"{Y} vs {X}" in report
    pngs = list(out.rglob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    assert any(p.name == "methods_scatter.png" for p in pngs)


def test_resume_reuses_finished_runs_and_trains_missing_ones(compared):
    recipe, out, rows = compared
    summaries = {r["run"]: Path(r["run"]) / "summary.json" for r in trained(rows)}
    before = {k: (p.stat().st_mtime_ns, p.read_text()) for k, p in summaries.items()}
    missing = out / "sequential-s1"
    shutil.rmtree(missing)
    again = compare(recipe, METHODS, SEEDS, out, [], True, X, Y)
    for r in trained(again):
        p = summaries[r["run"]]
        if Path(r["run"]) == missing:
            assert p.exists()  # retrained
        else:
            assert (p.stat().st_mtime_ns, p.read_text()) == before[r["run"]], r["run"]  # not retrained
    # same recipe, seed and data: the retrained run reproduces its row (apart from wall time)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(again) == strip(rows)


def test_unknown_method_fails_before_any_training(tmp_path, tiny_model_dir, synthetic_files):
    recipe = write_recipe(tmp_path, tiny_model_dir, synthetic_files)
    out = tmp_path / "cmp"
    with pytest.raises(ValueError, match="hbta"):
        compare(recipe, ["sequential", "hbta"], [0], out, [], False)
    assert not (out / "sequential-s0").exists()
    res = CliRunner().invoke(cli_app, ["compare", str(recipe), "--methods", "sequential,hbta", "--seeds", "0",
                                       "--out", str(out)])
    assert res.exit_code != 0
    assert "unknown method" in res.output and "hbta" in res.output and "Traceback" not in res.output
    assert not (out / "sequential-s0").exists()
