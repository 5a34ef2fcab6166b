"""``run_eval`` (``tandem eval``) with a temperature sweep on the tiny saved model.

The sweep writes one row per (temperature, generation metric) with one value per repeat (seeds ``eval.seed``,
``eval.seed + 1``, ...); each value is that repeat's own results.json. Greedy decoding (t = 0) gives the same
generations, hence the same values, at every repeat; sampling at t = 1 does not.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from helpers_entry import cli_app, run_eval, write_report
from helpers_recipe import base_raw, with_overrides
from typer.testing import CliRunner

from tandem.config.recipe import dump_recipe

TEMPS = [0.0, 1.0]
REPEATS = 3
GEN_METRICS = ["rouge", "exact_match", "reward_fn"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


def eval_recipe(tmp: Path, model_dir, files):
    heldout = tmp / "heldout.txt"
    heldout.write_text("The quick brown fox jumps over the lazy dog.\n")
    return with_overrides(base_raw(tmp, model_dir, files), {
        "eval.data": {"source": str(files["sft"]), "limit": 4}, "eval.metrics": [*GEN_METRICS, "perplexity"],
        "eval.reward_fn": "helpers_ppo:length_reward", "eval.heldout_text": str(heldout),
        "eval.temperature": 1.0, "eval.top_p": 1.0, "eval.max_new_tokens": 6, "eval.batch_size": 4,
        "eval.temperatures": TEMPS, "eval.repeats": REPEATS, "eval.seed": 7})


def generations(d: Path) -> list[str]:
    return [json.loads(x)["output"] for x in (d / "generations.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_model_dir, synthetic_files):
    tmp = tmp_path_factory.mktemp("eval-sweep")
    r = eval_recipe(tmp, tiny_model_dir, synthetic_files)
    out = tmp / "eval"
    res = run_eval(tiny_model_dir, r.eval, out, r.eval.metrics, r.eval.temperatures)
    return r, out, res


def test_sweep_has_one_row_per_temperature_and_metric_with_every_repeat(swept):
    r, out, res = swept
    rows = json.loads((out / "temperature_sweep.json").read_text())
    assert res["temperature_sweep"] == rows
    assert [x["temperature"] for x in rows] == sorted(x["temperature"] for x in rows)  # in sweep order
    assert sorted({x["temperature"] for x in rows}) == TEMPS
    metrics = {x["metric"] for x in rows}
    # only the generation metrics are swept (perplexity does not depend on the temperature)
    assert {m.split("/")[0] for m in metrics} == set(GEN_METRICS)
    assert {"rouge/rouge1", "exact_match/accuracy", "reward_fn/mean"} <= metrics
    assert len(rows) == len(TEMPS) * len(metrics)
    for t in TEMPS:
        assert sorted(x["metric"] for x in rows if x["temperature"] == t) == sorted(metrics)
    seeds = [r.eval.seed + i for i in range(REPEATS)]
    for row in rows:
        assert row["n"] == REPEATS == len(row["values"])
        assert row["mean"] == pytest.approx(statistics.fmean(row["values"]))
        assert row["std"] == pytest.approx(statistics.stdev(row["values"]))
        # each value is the result of that repeat's own evaluation, at that temperature and seed
        for seed, v in zip(seeds, row["values"]):
            rep = json.loads((out / f"t{row['temperature']:g}-s{seed}" / "results.json").read_text())
            assert rep["settings"]["temperature"] == row["temperature"] and rep["settings"]["seed"] == seed
            node = rep["metrics"]
            for part in row["metric"].split("/"):
                node = node[part]
            assert node == pytest.approx(v)
    main = json.loads((out / "results.json").read_text())
    assert "perplexity" in main["metrics"] and set(GEN_METRICS) <= set(main["metrics"])


def test_greedy_is_deterministic_and_sampling_is_not(swept):
    r, out, _ = swept
    rows = json.loads((out / "temperature_sweep.json").read_text())
    seeds = [r.eval.seed + i for i in range(REPEATS)]
    greedy = [generations(out / f"t0-s{s}") for s in seeds]
    assert all(g == greedy[0] for g in greedy) and len(greedy[0]) == 4
    for row in (x for x in rows if x["temperature"] == 0.0):
        assert row["std"] == 0.0 and len(set(row["values"])) == 1, row
    sampled = [generations(out / f"t1-s{s}") for s in seeds]
    assert len({tuple(g) for g in sampled}) > 1  # different seeds, different samples
    assert sampled[0] != greedy[0]
    hot = next(x for x in rows if x["temperature"] == 1.0 and x["metric"] == "reward_fn/mean")
    assert len(set(hot["values"])) > 1 and hot["std"] > 0  # reply lengths vary with the sampling seed
    # the main evaluation (eval.temperature 1.0, eval.seed) is the sweep's first repeat at t = 1
    assert generations(out) == sampled[0]


def test_report_plots_the_sweep(swept):
    _, out, _ = swept
    path = write_report(out)
    text = path.read_text()
    assert "Temperature sweep" in text and "temperature_sweep.json" in text
    assert (out / "report_plots" / "temperature_sweep.png").stat().st_size > 1000


def test_cli_eval_with_temperatures(tmp_path, tiny_model_dir, synthetic_files):
    r = eval_recipe(tmp_path, tiny_model_dir, synthetic_files)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(dump_recipe(r))
    out = tmp_path / "cli-eval"
    res = CliRunner().invoke(cli_app, ["eval", str(tiny_model_dir), "--recipe", str(recipe), "--metrics", "exact_match",
                                       "--temperatures", "0", "--set", "eval.repeats=2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "temperature_sweep.json" in res.output
    rows = json.loads((out / "temperature_sweep.json").read_text())
    assert [(x["temperature"], x["metric"], x["n"]) for x in rows] == [(0.0, "exact_match/accuracy", 2), (0.0, "exact_match/n", 2)]
    assert rows[0]["std"] == 0.0


def test_cli_eval_scores_the_extra_prompt_sets(tmp_path, tiny_model_dir, synthetic_files):
    r = eval_recipe(tmp_path, tiny_model_dir, synthetic_files)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(dump_recipe(r))
    out = tmp_path / "cli-eval"
    extra = f"eval.also={{second: {{data: {{source: {synthetic_files['sft']}, skip: 10, limit: 3}}}}}}"
    res = CliRunner().invoke(cli_app, ["eval", str(tiny_model_dir), "--recipe", str(recipe), "--metrics", "exact_match",
                                       "--set", "eval.temperatures=[]", "--set", extra, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "second:" in res.output and "also-second/results.json" in res.output
    got = json.loads((out / "also-second" / "results.json").read_text())["metrics"]
    assert got["reference_nll"]["n"] == 3 and 0 <= got["rouge"]["rougeL"] <= 1  # the set's default metrics
    prompts = [json.loads(x)["prompt"] for x in (out / "also-second" / "generations.jsonl").read_text().splitlines()]
    assert len(prompts) == 3 and prompts != [json.loads(x)["prompt"] for x in
                                             (out / "generations.jsonl").read_text().splitlines()][:3]
