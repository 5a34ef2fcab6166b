"""``tandem study``: every recipe of a directory x seeds, end to end on the tiny model (2 recipes x 2 seeds, one step per
stage); the table, the likelihood metrics and the temperature sweep in it, ``--resume`` reusing finished runs and their
evaluations, a data difference refused in one line before anything is written, and the real recipes/study loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers_entry import cli_app
from helpers_recipe import base_raw, with_overrides
from typer.testing import CliRunner

from tandem.config.recipe import dump_recipe
from tandem.pipelines.study import first_difference, load_study, study

ROOT = Path(__file__).resolve().parents[1]
ROWS = {"alt": "hbat-no-ewc", "seq": "sequential"}  # file stem -> schedule.method
SEEDS = [0, 1]


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_study(d: Path, model_dir, files, change: dict | None = None, reward_model: Path | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for stem, method in ROWS.items():
        over = {"schedule.parts": 2, "schedule.max_steps_per_stage": 1, "checkpoint.every": 0,
                "logging.tensorboard": False, "data.val_size": 4, "name": f"study-{stem}",
                "data.sft": {"source": str(files["sft"]), "limit": 12},
                "data.preference": {"source": str(files["preference"]), "limit": 12},
                "eval.data": {"source": str(files["sft"]), "skip": 40, "limit": 3},
                "eval.metrics": ["rouge", "reference_nll", "implicit_reward_accuracy"],
                "eval.pairs": str(files["preference"]), "eval.pairs_limit": 4, "eval.reference_model": str(model_dir),
                "eval.max_new_tokens": 4, "eval.temperature": 0.0, "eval.temperatures": [0.0, 1.0]}
        if reward_model is not None:
            over.update({"eval.metrics": [*over["eval.metrics"], "reward_win_rate"], "eval.reward_model": str(reward_model)})
        if stem == "seq" and change:
            over.update(change)
        (d / f"{stem}.yaml").write_text(dump_recipe(with_overrides(base_raw(d, model_dir, files, method), over)))
    (d / "_notes.yaml").write_text("not a recipe: skipped\n")
    return d


@pytest.fixture(scope="module")
def studied(tmp_path_factory, tiny_model_dir, synthetic_files):
    from helpers_evaluation import tiny_reward_model

    tmp = tmp_path_factory.mktemp("study")
    rm, rtok = tiny_reward_model(seed=4)
    rm.save_pretrained(tmp / "rm")
    rtok.save_pretrained(tmp / "rm")
    recipes = write_study(tmp / "recipes", tiny_model_dir, synthetic_files, reward_model=tmp / "rm")
    out = tmp / "out"
    res = CliRunner().invoke(cli_app, ["study", str(recipes), "--seeds", "0,1", "-o", str(out)])
    assert res.exit_code == 0, res.output
    return recipes, out, json.loads((out / "table.json").read_text())


def test_base_model_row_is_the_win_rate_baseline(studied):
    recipes, out, rows = studied
    base = rows[0]
    assert (base["method"], base["steps"]) == ("base", 0)
    assert "reward_win_rate/win_rate" not in base and "implicit_reward_accuracy/accuracy" not in base
    assert "rouge/rougeL" in base and "t1/rouge/rougeL" in base
    gens = out / "base" / "eval" / "generations.jsonl"
    assert len(gens.read_text().splitlines()) == 3
    for row in rows[1:]:
        used = yaml.safe_load((Path(row["run"]) / "recipe.yaml").read_text())
        assert used["eval"]["baseline"] == str(gens)  # every run's win rate is against the base model's replies
        assert 0 <= row["reward_win_rate/win_rate"] <= 1


def test_one_row_per_recipe_and_seed_with_eval_and_sweep(studied):
    recipes, out, rows = studied
    rows = rows[1:]  # after the base row
    assert [(r["method"], r["seed"]) for r in rows] == [(m, s) for m in ROWS for s in SEEDS]
    for row in rows:
        run = Path(row["run"])
        assert run == out / f"{row['method']}-s{row['seed']}" and row["recipe"] == str(recipes / f"{row['method']}.yaml")
        used = yaml.safe_load((run / "recipe.yaml").read_text())
        assert (used["schedule"]["method"], used["seed"]) == (ROWS[row["method"]], row["seed"])
        res = json.loads((run / "eval" / "results.json").read_text())["metrics"]
        assert row["reference_nll/nll"] == res["reference_nll"]["nll"] > 0 and row["reference_nll/n"] == 3
        assert row["implicit_reward_accuracy/n"] == 4 and 0 <= row["implicit_reward_accuracy/accuracy"] <= 1
        assert {"t0/rouge/rougeL", "t1/rouge/rougeL", "rouge/rougeL"} <= set(row)
    md = (out / "table.md").read_text().splitlines()
    assert [ln.split("|")[1].strip() for ln in md[2:]] == ["base", *ROWS]
    assert "reference_nll/nll" in md[0] and " ± " in md[3]
    report = (out / "report.md").read_text()
    assert "rouge/rougeL" in report and (out / "report_plots" / "methods_scatter.png").is_file()


def test_resume_reuses_finished_runs_and_their_evaluations(studied):
    recipes, out, rows = studied
    stamps = {r["run"]: [(p, p.stat().st_mtime_ns) for p in (Path(r["run"]) / "summary.json",
                                                               Path(r["run"]) / "eval" / "results.json")] for r in rows[1:]}
    stamps[rows[0]["run"]] = [(p, p.stat().st_mtime_ns) for p in (out / "base" / "eval" / "results.json",)]
    again = study(recipes, SEEDS, out, [], resume=True)
    for r in again:
        assert [(p, p.stat().st_mtime_ns) for p, _ in stamps[r["run"]]] == stamps[r["run"]]  # nothing retrained
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in again] == \
           [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_a_data_difference_is_refused_in_one_line_before_anything_is_written(tmp_path, tiny_model_dir, synthetic_files):
    recipes = write_study(tmp_path / "recipes", tiny_model_dir, synthetic_files, {"data.max_length": 48})
    out = tmp_path / "out"
    res = CliRunner().invoke(cli_app, ["study", str(recipes), "--seeds", "0", "-o", str(out)])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "data.max_length" in lines[0] and "alt.yaml" in lines[0] and "seq.yaml" in lines[0]
    assert not out.exists()
    # the per-method fields may differ
    ok = write_study(tmp_path / "ok", tiny_model_dir, synthetic_files, {"hbat.mix_gamma": 0.9, "objectives.sft.name": "sft"})
    assert list(load_study(ok)) == list(ROWS)


def test_first_difference_names_the_dotted_field():
    assert first_difference({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}}) == "a.c"
    assert first_difference({"a": 1}, {"a": 1, "z": {"y": 0}}) == "z"
    assert first_difference({"a": [1, 2]}, {"a": [1, 2]}) is None


def test_the_study_recipes_load_and_share_their_data_and_budget():
    loaded = load_study(ROOT / "recipes" / "study")
    assert {name: r.schedule.method for name, (_, r) in loaded.items()} == {
        "alright": "alright", "hbat": "hbat", "hbat-no-ewc": "hbat-no-ewc", "orpo": "orpo", "rlhf+pt": "rlhf+pt",
        "sequential": "sequential"}
    for _, r in loaded.values():
        assert r.model.name_or_path == "models/smollm2-135m-instruct" and r.model.lora.r == 16
        assert r.eval.data.skip >= r.data.sft.limit  # held-out Alpaca rows are not trained on
        assert set(r.eval.metrics) == {"rouge", "reference_nll", "reward", "reward_win_rate", "implicit_reward_accuracy"}
        assert r.eval.temperatures == [0.25, 0.75, 1.0]
        assert r.eval.also["alpaca_eval"].data.source.endswith("alpaca_eval_gpt4_1106_preview.jsonl.gz")


def test_an_extra_prompt_set_adds_columns_without_redoing_the_main_evaluation(studied, synthetic_files):
    recipes, out, rows = studied
    main = {r["run"]: (Path(r["run"]) / "eval" / "results.json").stat().st_mtime_ns for r in rows}
    extra = f"eval.also={{extra: {{data: {{source: {synthetic_files['sft']}, skip: 20, limit: 2}}}}}}"
    again = study(recipes, SEEDS, out, [extra], resume=True)
    for r in again:
        run = Path(r["run"])
        assert (run / "eval" / "results.json").stat().st_mtime_ns == main[r["run"]]  # main evaluation reused
        res = json.loads((run / "eval" / "also-extra" / "results.json").read_text())["metrics"]
        assert r["extra/reference_nll/n"] == 2 and r["extra/reference_nll/nll"] == res["reference_nll"]["nll"] > 0
        assert "extra/rouge/rougeL" in r and "extra/t1/rouge/rougeL" not in r  # no sweep on an extra set
        assert r["extra/reference_nll/nll"] != r["reference_nll/nll"]  # other prompts, other numbers
    stamps = {r["run"]: (Path(r["run"]) / "eval" / "also-extra" / "results.json").stat().st_mtime_ns for r in again}
    third = study(recipes, SEEDS, out, [extra], resume=True)
    assert {r["run"]: (Path(r["run"]) / "eval" / "also-extra" / "results.json").stat().st_mtime_ns
            for r in third} == stamps  # reused with the same block
    assert "extra/rouge/rougeL" in (out / "table.md").read_text()


@pytest.mark.parametrize("also, needle", [
    ({"x": {"data": {"source": "a.jsonl"}, "metrics": ["reward_win_rate"]}}, "reward_win_rate"),
    ({"x": {"data": {"source": "a.jsonl"}, "metrics": []}}, "at least one metric"),
    ({"bad name": {"data": {"source": "a.jsonl"}}}, "set name"),
])
def test_extra_prompt_sets_refuse_what_they_cannot_score(also, needle):
    from tandem.config.recipe import EvalConfig

    with pytest.raises(ValueError, match=needle):
        EvalConfig(also=also)


def test_only_runs_the_named_rows_and_refuses_an_unknown_one(studied, tmp_path):
    recipes, out, rows = studied
    again = study(recipes, SEEDS, out, [], resume=True, only=["seq"])  # finished runs reused: nothing trains
    assert [(r["method"], r["seed"]) for r in again] == [("base", 0), ("seq", 0), ("seq", 1)]
    assert [ln.split("|")[1].strip() for ln in (out / "table.md").read_text().splitlines()[2:]] == ["base", "seq"]
    res = CliRunner().invoke(cli_app, ["study", str(recipes), "--only", "seq,orpo", "-o", str(tmp_path / "new")])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--only: no recipe orpo" in lines[0] and "alt, seq" in lines[0]
    assert not (tmp_path / "new").exists()


def test_jobs_run_the_same_runs_side_by_side(studied, tmp_path):
    """--jobs 2: each (row, seed) in a process of its own with one thread; the same rows, in plan order, with the same
    numbers as the one-job study (also one thread); a bad --jobs is refused."""
    recipes, _, rows = studied
    got = study(recipes, SEEDS, tmp_path / "par", [], jobs=2, threads=1)
    assert [(r["method"], r["seed"]) for r in got] == [(r["method"], r["seed"]) for r in rows]
    for a, b in zip(got, rows):
        if a["method"] == "base":
            continue
        assert a["run"] != b["run"] and a["steps"] == b["steps"]
        for k in ("rouge/rougeL", "reference_nll/nll", "implicit_reward_accuracy/accuracy", "reward_win_rate/win_rate"):
            assert a[k] == b[k], k
    assert json.loads((tmp_path / "par" / "table.json").read_text()) == got
    with pytest.raises(ValueError, match="--jobs"):
        study(recipes, SEEDS, tmp_path / "bad", [], jobs=0)


def test_a_job_dies_with_its_study(tmp_path):
    """kill -9 of the study's process takes its jobs with it: no orphan trains on into a run dir that a --resume then
    uses (the pool's initializer, as run_parallel starts it)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    pid_file = tmp_path / "child.pid"
    script = f"""
import os, time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from tandem.pipelines.jobs import die_with_parent

def job(path):
    open(path, "w").write(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        pool.submit(job, {str(pid_file)!r}).result()
"""
    (tmp_path / "study.py").write_text(script)  # a file: spawn re-imports the main module by its path
    parent = subprocess.Popen([sys.executable, str(tmp_path / "study.py")])
    try:
        deadline = time.time() + 60
        while not (pid_file.is_file() and pid_file.read_text()) and time.time() < deadline:
            time.sleep(0.1)
        child = int(pid_file.read_text())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            if open(f"/proc/{child}/stat").read().split(") ")[1][0] == "Z":  # dead, not yet reaped
                break
            time.sleep(0.1)
        else:
            os.kill(child, signal.SIGKILL)
            pytest.fail("the job outlived its study")
    finally:
        parent.kill()
