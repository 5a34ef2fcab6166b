"""Paired contrasts: hand-computed bootstrap, t-test and Holm values; pairing by seed and prompt; the CLI on a table."""

import json
import math

import pytest
from typer.testing import CliRunner

from tandem.cli.main import app
from tandem.report.stats import contrast, contrasts, hierarchical_bootstrap, holm, paired_t


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, max(0.06, 1 x 0.04) = 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adj = holm([0.2, None, 0.9])  # m = 2: 2 x 0.2 = 0.4, max(0.4, 0.9) = 0.9; None stays None
    assert adj[0] == pytest.approx(0.4) and adj[1] is None and adj[2] == pytest.approx(0.9)


def test_paired_t_by_hand():
    # d = 1, 2, 3: mean 2, sd 1, t = 2 sqrt(3); df 2: sf(t) = (1 - t / sqrt(t^2 + 2)) / 2
    t, p = paired_t([1.0, 2.0, 3.0])
    t0 = 2 * math.sqrt(3)
    assert t == pytest.approx(t0)
    assert p == pytest.approx(1 - t0 / math.sqrt(t0 ** 2 + 2))
    assert paired_t([0.0, 0.0]) == (0.0, 1.0) and paired_t([0.2, 0.2]) == (math.inf, 0.0)
    with pytest.raises(ValueError):
        paired_t([1.0])


def test_bootstrap_resamples_seeds_then_prompts():
    # no spread within a seed: the mean of 2 resampled seeds is 0.1, 0.2 or 0.3 with probability 1/4, 1/2, 1/4
    lo, hi = hierarchical_bootstrap([[0.1] * 5, [0.3] * 5], n_boot=4000)
    assert (lo, hi) == pytest.approx((0.1, 0.3))
    # one seed: only prompts vary; constant differences give a zero-width interval
    assert hierarchical_bootstrap([[0.25] * 7]) == pytest.approx((0.25, 0.25))
    # prompts matter: a seed with differences 0 and 1 has a wider interval than a seed with 0.5 and 0.5
    wide = hierarchical_bootstrap([[0.0, 1.0] * 10, [0.0, 1.0] * 10])
    assert wide[0] < 0.4 and wide[1] > 0.6


def test_contrast_pairs_seeds_and_prompts():
    a = {0: {"p1": 1.0, "p2": 1.0, "p3": 0.0}, 1: {"p1": 1.0, "p2": 0.0}, 2: {"p1": 1.0}}
    b = {0: {"p1": 0.0, "p2": 1.0, "p4": 1.0}, 1: {"p1": 1.0, "p2": 0.0}}
    r = contrast(a, b, n_boot=500)
    # seed 0: prompts p1, p2 -> (1 + 0) / 2 = 0.5; seed 1: 0; seed 2 is not in b
    assert r["diff"] == pytest.approx(0.25) and r["n_seeds"] == 2 and r["n_prompts"] == 2
    assert r["ci_low"] <= 0.25 <= r["ci_high"] and r["p"] is not None
    one = contrast({0: {"x": 1.0}}, {0: {"x": 0.5}})
    assert one["diff"] == pytest.approx(0.5) and one["ci_low"] is None and one["p"] is None
    with pytest.raises(ValueError, match="not found"):
        contrasts({"a": a}, [("a", "zz")])


def test_cli_contrasts_on_a_table(tmp_path):
    rows = []
    for arm, rate in (("sft-only", 0.9), ("sequential", 0.5)):
        for seed in (0, 1, 2):
            run = tmp_path / f"{arm}-s{seed}"
            (run / "eval").mkdir(parents=True)
            (run / "eval" / "per_prompt.jsonl").write_text("".join(
                json.dumps({"prompt": f"q{i}", "pass": i < rate * 10 + seed % 2, "style": False, "words": 3}) + "\n"
                for i in range(10)))
            rows.append({"method": arm, "seed": seed, "run": str(run), "acc": rate + 0.01 * seed})
    (tmp_path / "table.json").write_text(json.dumps(rows))
    r = CliRunner().invoke(app, ["contrasts", str(tmp_path), "--contrast", "sft-only:sequential", "--metric", "pass",
                                 "--metric", "acc", "--n-boot", "300"])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "contrasts.json").read_text())
    assert [x["metric"] for x in res] == ["pass", "acc"]
    assert res[0]["diff"] == pytest.approx(0.4) and res[0]["ci_low"] > 0 and res[0]["n_seeds"] == 3
    assert res[1]["diff"] == pytest.approx(0.4) and res[1]["n_prompts"] == 1
    assert "sft-only - sequential" in (tmp_path / "contrasts.md").read_text()
    r = CliRunner().invoke(app, ["contrasts", str(tmp_path), "--contrast", "sft-only-sequential"])
    assert r.exit_code == 2 and "expected A:B" in r.output
    r = CliRunner().invoke(app, ["contrasts", str(tmp_path), "--contrast", "hbat:sequential"])
    assert r.exit_code == 2 and "hbat" in r.output
    # a questions file on a study run in pieces: what has not run yet is listed, the rest answered
    q = tmp_path / "_contrasts.yaml"
    q.write_text("contrasts:\n  - {name: tax, a: sft-only, b: sequential}\n  - {name: c, a: hbat, b: sequential}\n")
    r = CliRunner().invoke(app, ["contrasts", str(tmp_path), "--questions", str(q), "--n-boot", "200"])
    assert r.exit_code == 0, r.output
    assert "Not run yet (arms hbat): hbat - sequential" in r.output and "sft-only - sequential | +0.400" in r.output


def test_contrasts_across_studies(tmp_path):
    """--with NAME=DIR: another study's rows as NAME/<row>, paired with this study's by seed and prompt."""
    for study, rate in (("rho1", 0.5), ("rho0", 0.8)):
        rows = []
        for seed in (0, 1):
            run = tmp_path / study / f"sequential-s{seed}"
            (run / "eval").mkdir(parents=True)
            (run / "eval" / "per_prompt.jsonl").write_text("".join(
                json.dumps({"prompt": f"q{i}", "pass": i < rate * 10, "style": True, "words": 3}) + "\n" for i in range(10)))
            rows.append({"method": "sequential", "seed": seed, "run": str(run)})
        (tmp_path / study / "table.json").write_text(json.dumps(rows))
    r = CliRunner().invoke(app, ["contrasts", str(tmp_path / "rho1"), "--with", f"rho0={tmp_path / 'rho0'}",
                                 "--contrast", "rho0/sequential:sequential", "--n-boot", "200"])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "rho1" / "contrasts.json").read_text())
    assert res[0]["diff"] == pytest.approx(0.3) and res[0]["n_seeds"] == 2 and res[0]["n_prompts"] == 10
    r = CliRunner().invoke(app, ["contrasts", str(tmp_path / "rho1"), "--with", "rho0", "--contrast", "a:b"])
    assert r.exit_code == 2 and "expected NAME=DIR" in r.output
    r = CliRunner().invoke(app, ["contrasts", str(tmp_path / "rho1"), "--with", f"x={tmp_path}", "--contrast", "a:b"])
    assert r.exit_code == 2 and "table.json not found" in r.output


def test_compare_and_study_refuse_a_bad_contrast_before_training(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {name_or_path: nowhere}\n")
    r = CliRunner().invoke(app, ["compare", str(recipe), "--contrast", "hbat-sequential", "-o", str(tmp_path / "c")])
    assert r.exit_code == 2 and "expected A:B" in r.output and not (tmp_path / "c").exists()
    study = tmp_path / "study"
    study.mkdir()
    import shutil
    from pathlib import Path

    for arm in ("sequential", "hbat"):
        shutil.copy(Path(__file__).resolve().parents[1] / "recipes" / "conflict" / f"{arm}.yaml", study)
    r = CliRunner().invoke(app, ["study", str(study), "--contrast", "hbat:alright", "-o", str(tmp_path / "s")])
    assert r.exit_code == 2 and "no recipe for arm(s) alright" in r.output and not (tmp_path / "s").exists()
    (study / "_contrasts.yaml").write_text("contrasts: [{name: q, a: hbat, b: sequential}]\n"
                                           "frontier: {wise_ft: {toward: sft-only@0, alphas: [0.5]}}\n")
    r = CliRunner().invoke(app, ["study", str(study), "-o", str(tmp_path / "s")])  # <arm>@0 names an arm too
    assert r.exit_code == 2 and "no recipe for arm(s) sft-only" in r.output and not (tmp_path / "s").exists()
