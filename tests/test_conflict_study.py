"""The conflict benchmark end to end on a tiny model: make the data, run the shipped study recipes (three arms, two
seeds) with their questions and frontiers, and read a verdict with confidence intervals."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tandem.cli.main import app
from tandem.data.conflict import make, write

pytestmark = pytest.mark.slow
RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "conflict"
ARMS = ("sft-only", "sequential", "hbat-no-ewc")


@pytest.fixture(scope="module")
def study_out(tmp_path_factory):
    from tandem.models.tiny import make_tiny_llama

    root = tmp_path_factory.mktemp("conflict")
    rows, meta = make(rho=1.0, seed=0, sizes={"sft": 32, "pairs": 32, "val": 10, "test": 12, "test_pairs": 8})
    bench = write(root / "bench", rows, meta)
    texts = [r["prompt"] + " " + r["response"] for r in rows["sft"]] + [p["chosen"] for p in rows["pairs"]]
    model = make_tiny_llama(root / "model", texts, seed=0)
    sets = {"model.name_or_path": model, "eval.reference_model": model, "data.sft.source": bench / "sft.jsonl",
            "data.preference.source": bench / "pairs.jsonl", "eval.data.source": bench / "test.jsonl",
            "eval.pairs": bench / "test_pairs.jsonl", "checkpoint.every": 2, "eval.max_new_tokens": 6,
            "batching.batch_size": 8, "eval.metrics": "[conflict]",
            "precision": "fp32", "data.max_length": 64, "optimizer.lr": 3e-3, "logging.progress": "false"}
    study = root / "recipes"  # the shipped recipes of three arms, with a smaller frontier than the shipped questions
    study.mkdir()
    for arm in ARMS:
        shutil.copy(RECIPES / f"{arm}.yaml", study)
    questions = yaml.safe_load((RECIPES / "_contrasts.yaml").read_text())
    questions["contrasts"] = [q for q in questions["contrasts"]
                              if {q["a"].split("@")[0], q["b"]} <= set(ARMS)]  # sequential@0: a frontier row
    questions["frontier"].update(early_stop={"arm": "sequential", "at": [0, 0.5]}, wise_ft={"toward": "sft-only", "alphas": [0.5]})
    # question (d): two groups of the 4 layers, ratios 0.5 or 1 each, picked on val, scored on test
    questions["group_ratios"] = {"toward": "sft-only", "groups": "block2", "grid": [0.5, 1.0],
                                 "val": str(bench / "val.jsonl"), "style_at": 0.5}
    questions["contrasts"].append({"name": "(d) per-group ratios against Wise-FT", "a": "sequential~groups",
                                   "b": "sequential~global"})
    (study / "_contrasts.yaml").write_text(yaml.safe_dump(questions))
    out = root / "study-out"
    args = ["study", str(study), "--seeds", "0,1", "-o", str(out)]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    return out


def test_study_writes_a_verdict_with_confidence_intervals(study_out):
    res = json.loads((study_out / "contrasts.json").read_text())
    tax = [r for r in res if r["a"] == "sft-only" and r["b"] == "sequential" and r["metric"] == "pass"]
    assert len(tax) == 1 and tax[0]["n_seeds"] == 2 and tax[0]["n_prompts"] == 12
    assert tax[0]["ci_low"] <= tax[0]["diff"] <= tax[0]["ci_high"] and 0 <= tax[0]["p_holm"] <= 1
    asked = {(r["a"], r["b"]) for r in res}
    assert asked == {("sft-only", "sequential"), ("sequential@0", "sequential"), ("hbat-no-ewc", "sequential"),
                     ("sequential~groups", "sequential~global")}
    d = next(r for r in res if r["a"] == "sequential~groups" and r["metric"] == "pass")
    assert d["n_seeds"] == 2 and d["n_prompts"] == 12  # paired on the test prompts
    assert {"(a) is there a tax?", "(b) does alternation reduce it?"} <= {r["name"] for r in res}
    assert "95% CI" in (study_out / "contrasts.md").read_text()
    # the report's plot is the benchmark's trade-off: pass rate against the preferred-style rate, frontier points too
    report = (study_out / "report.md").read_text()
    assert "## conflict/style_rate vs conflict/pass_rate" in report and (study_out / "report_plots").is_dir()


def test_study_rows_have_per_prompt_outputs_budgets_and_frontiers(study_out):
    rows = json.loads((study_out / "table.json").read_text())
    names = {r["method"] for r in rows}
    assert {"sequential@0", "sequential@0.5", "sequential~0.5", "hbat-no-ewc~0.5"} <= names
    assert not any(n.startswith("sft-only~") for n in names)  # merged toward itself: nothing to trace
    for r in rows:
        per_prompt = [json.loads(x) for x in open(f"{r['run']}/eval/per_prompt.jsonl")]
        assert len(per_prompt) == 12 and {"prompt", "family", "reply", "pass", "style", "words"} <= set(per_prompt[0])
        assert 0 <= r["conflict/pass_rate"] <= 1
    seq = next(r for r in rows if r["method"] == "sequential" and r["seed"] == 0)
    assert seq["budget/sft"] == 32 and seq["budget/preference"] == 32 and "frontier/pass_at_style" in seq
    # the early stop at 50% is the checkpoint two of the four DPO steps in
    early = next(r for r in rows if r["method"] == "sequential@0.5" and r["seed"] == 0)
    assert early["conflict/pass_rate"] is not None
    states = [json.loads(p.read_text()) for p in (study_out / "sequential-s0" / "checkpoints").glob("*/state.json")]
    assert {(s["stage_index"], s["stage_step"]) for s in states} >= {(1, 2)}
    # the early stop at 0 is the run's own SFT model: the checkpoint that closed stage 0, scored like the others
    from tandem.pipelines.frontier import early_stop_checkpoints

    (_, start), = early_stop_checkpoints(study_out / "sequential-s0", [0])
    assert json.loads((start / "state.json").read_text())["stage_index"] == 0
    assert json.loads((start / "state.json").read_text())["stage_done"]
    at0 = next(r for r in rows if r["method"] == "sequential@0" and r["seed"] == 0)
    assert at0["run"].endswith("frontier/sequential-at-0") and at0["conflict/n"] == 12


def test_group_ratios_pick_on_val_and_score_on_test(study_out):
    """Question (d): each arm but sft-only gets a per-group pick (any of the 4 ratio pairs) and a global pick (equal
    ratios) chosen on the validation prompts by the stated rule, then scored on the test prompts."""
    from tandem.pipelines.group_ratios import pick

    rows = json.loads((study_out / "table.json").read_text())
    for arm in ("sequential", "hbat-no-ewc"):
        for seed in (0, 1):
            root = study_out / f"{arm}-s{seed}" / "group-ratios"
            points = []
            for d in sorted(root.glob("r-*")):
                res = json.loads((d / "val" / "eval" / "results.json").read_text())["metrics"]["conflict"]
                points.append((tuple(float(x) for x in d.name[2:].split("-")), res["pass_rate"], res["style_rate"]))
                assert res["n"] == 10  # the validation prompts, not the test ones
            assert len(points) == 4
            got = {r["method"].split("~")[1]: r for r in rows if r["seed"] == seed and r["method"] in (f"{arm}~groups", f"{arm}~global")}
            assert tuple(got["groups"]["ratios"]) == pick(points, 0.5)
            assert tuple(got["global"]["ratios"]) == pick([p for p in points if p[0][0] == p[0][1]], 0.5)
            assert got["groups"]["conflict/n"] == 12 == got["global"]["conflict/n"]  # scored on the test prompts
    assert not any(r["method"].startswith("sft-only~g") for r in rows)


def test_wise_ft_toward_a_run_s_own_sft_model(study_out, tmp_path):
    """``toward: sequential@0``: the seed's sequential run's end-of-SFT checkpoint is the merge base, so a Wise-FT of
    sequential is the paper's (weights before and after its preference stage) and needs no sft-only run."""
    from safetensors.torch import load_file

    from tandem.models.merged import load_full_weights
    from tandem.pipelines.frontier import check_frontier, early_stop_checkpoints, toward_model
    from tandem.pipelines.merge import merge_models

    rows = json.loads((study_out / "table.json").read_text())
    by_key = {(r["method"], r["seed"]): r for r in rows}
    (_, start), = early_stop_checkpoints(study_out / "sequential-s1", [0])
    assert toward_model("sequential@0", 1, by_key) == start
    assert toward_model("sft-only", 1, by_key) == study_out / "sft-only-s1" / "final"
    assert toward_model("sequential@0", 7, by_key) is None  # no run of that seed
    merge_models(str(start), str(study_out / "hbat-no-ewc-s1" / "final"), tmp_path / "m", alpha=0.25)
    base = load_full_weights(start).state_dict()
    tuned = load_full_weights(study_out / "hbat-no-ewc-s1" / "final").state_dict()
    merged = load_file(str(tmp_path / "m" / "model.safetensors"))
    name = next(k for k in merged if "q_proj" in k)
    assert not torch.equal(base[name], tuned[name])  # the SFT checkpoint is not the final model
    torch.testing.assert_close(merged[name].float(), (0.75 * base[name] + 0.25 * tuned[name]).float(), rtol=1e-3, atol=1e-6)
    assert check_frontier({"wise_ft": {"toward": "sequential@0", "alphas": [0.5]}}, "f")
    with pytest.raises(ValueError, match="toward must be an arm"):
        check_frontier({"wise_ft": {"toward": "sequential@0.5", "alphas": [0.5]}}, "f")


def test_pick_rule_by_hand():
    from tandem.pipelines.group_ratios import candidates, pick

    assert candidates([0.5, 1.0], 2) == [(0.5, 0.5), (0.5, 1.0), (1.0, 0.5), (1.0, 1.0)]
    pts = [((0.5, 0.5), 0.9, 0.2), ((0.5, 1.0), 0.7, 0.6), ((1.0, 0.5), 0.8, 0.5), ((1.0, 1.0), 0.3, 1.0)]
    assert pick(pts, 0.5) == (1.0, 0.5)  # best pass among style >= 0.5 (0.9 has too little style)
    assert pick(pts, 1.0) == (1.0, 1.0)
    assert pick(pts[:1], 0.5) == (0.5, 0.5)  # none reaches the style: the most stylish


def test_shipped_questions_name_shipped_arms():
    from tandem.pipelines.contrasts import read_frontier, read_questions

    arms = {p.stem for p in RECIPES.glob("*.yaml") if not p.name.startswith("_")}
    qs = read_questions(RECIPES / "_contrasts.yaml")
    spec = read_frontier(RECIPES / "_contrasts.yaml")
    points = {f"{spec['early_stop']['arm']}@{f:g}" for f in spec["early_stop"]["at"]}
    assert {q[k] for q in qs for k in ("a", "b")} <= arms | points and len(arms) == 8
    assert spec["early_stop"]["arm"] in arms and spec["wise_ft"]["toward"] in arms


def test_score_reproduces_the_metric_from_the_saved_replies(study_out, tmp_path):
    run = study_out / "hbat-no-ewc-s1"
    replies = tmp_path / "replies.jsonl"
    replies.write_text("".join(json.dumps({"prompt": r["prompt"], "reply": r["reply"]}) + "\n"
                               for r in map(json.loads, open(run / "eval" / "per_prompt.jsonl"))))
    test = yaml.safe_load((run / "recipe.yaml").read_text())["eval"]["data"]["source"]
    r = CliRunner().invoke(app, ["conflict", "score", test, str(replies)])
    assert r.exit_code == 0, r.output
    row = next(x for x in json.loads((study_out / "table.json").read_text())
               if x["method"] == "hbat-no-ewc" and x["seed"] == 1)
    assert json.loads(r.output)["pass_rate"] == pytest.approx(row["conflict/pass_rate"])
