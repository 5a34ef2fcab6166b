"""Bad inputs to every command, through the real CLI (typer's CliRunner): each case must end with exit code 2, one
``error:`` line naming the file, line, field or flag at fault, no traceback, and nothing written or deleted in the
sandbox outside the case's own run directory (the sandbox, also the working directory, is snapshotted before and
after). Most cases fail before any model is loaded; the few that load one use the tiny model of conftest.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from conftest import write_jsonl
from typer.testing import CliRunner

from tandem.cli.main import app
from tandem.config.recipe import dump_recipe, parse_recipe
from tandem.data import synthetic
from tandem.io.rundir import write_marker

SFT_ROWS = synthetic.to_records(synthetic.instruction_tasks(16, 0))
PAIR_ROWS = synthetic.to_records(synthetic.preference_pairs(16, 1))


@pytest.fixture(autouse=True)
def no_debug(monkeypatch, one_thread):
    monkeypatch.delenv("TANDEM_DEBUG", raising=False)


def recipe_raw(sb: Path, model: Path, method: str = "sft") -> dict:
    return {
        "name": "bad-inputs", "output_dir": str(sb / "run"), "seed": 0, "precision": "fp32",
        "model": {"name_or_path": str(model), "dtype": "float32"},
        "data": {"sft": {"source": str(sb / "sft.jsonl")}, "preference": {"source": str(sb / "pref.jsonl")},
                 "max_length": 64, "val_size": 0},
        "batching": {"mode": "pack", "batch_size": 4},
        "optimizer": {"lr": 1e-3},
        "schedule": {"method": method, "epochs": 1, "max_steps_per_stage": 1},
        "objectives": {"sft": {"name": "sft"}, "preference": {"name": "dpo", "beta": 0.1}},
        "checkpoint": {"every": 0},
        "logging": {"progress": False, "tensorboard": False},
        "eval": {"data": {"source": str(sb / "sft.jsonl"), "limit": 2}, "metrics": ["exact_match"],
                 "max_new_tokens": 2, "batch_size": 2},
    }


def make_sandbox(sb: Path, model: Path) -> None:
    """Data files (good and bad), recipes (good and bad), a user's folder, a file, a finished tandem run."""
    write_jsonl(sb / "sft.jsonl", SFT_ROWS)
    write_jsonl(sb / "pref.jsonl", PAIR_ROWS)
    write_jsonl(sb / "alpaca.jsonl", [{"instruction": f"Say {i}.", "input": "", "output": str(i)} for i in range(8)])
    write_jsonl(sb / "kto.jsonl", [{"prompt": "Hi", "completion": "Hello", "label": i % 2 == 0} for i in range(8)])
    write_jsonl(sb / "same.jsonl", [{"prompt": f"Q{i}", "chosen": "A", "rejected": "A"} for i in range(8)])
    (sb / "latin1.jsonl").write_bytes(json.dumps(SFT_ROWS[0]).encode() + b'\n{"prompt": "caf\xe9", "response": "x"}\n')
    (sb / "broken.jsonl").write_text(json.dumps(SFT_ROWS[0]) + '\n{"prompt": "x", "response": \n')
    (sb / "recipe.yaml").write_text(yaml.safe_dump(recipe_raw(sb, model), sort_keys=False))
    (sb / "dpo.yaml").write_text(yaml.safe_dump(recipe_raw(sb, model, "dpo"), sort_keys=False))
    text = (sb / "recipe.yaml").read_text()
    (sb / "dup.yaml").write_text(text.replace("  batch_size: 4\n", "  batch_size: 4\n  batch_size: 8\n"))
    (sb / "syntax.yaml").write_text(text.replace("  lr: 0.001\n", "  lr: [0.001\n"))
    tax = recipe_raw(sb, model)
    tax["tax"] = {"tuned": str(model), "reward_model": str(model), "out": str(sb / "tax"), "sweep": [0.0, 1.0],
                  "trials": 1, "prompts": {"source": str(sb / "sft.jsonl"), "limit": 2}, "max_new_tokens": 2}
    (sb / "tax.yaml").write_text(yaml.safe_dump(tax, sort_keys=False))
    user = sb / "user"  # a folder tandem did not create: never written into, never replaced
    (user / "data").mkdir(parents=True)
    (user / "notes.txt").write_text("my notes\n")
    (user / "data" / "train.jsonl").write_text(json.dumps(SFT_ROWS[0]) + "\n")
    (sb / "qs" / "hbat").mkdir(parents=True)  # the quickstart case: the user's files in DIR/hbat
    (sb / "qs" / "hbat" / "precious.txt").write_text("do not delete\n")
    (sb / "afile.txt").write_text("a file, not a directory\n")
    done = sb / "done"  # an earlier tandem run (its recipe differs in optimizer.lr)
    done.mkdir()
    write_marker(done, "train")
    changed = recipe_raw(sb, model)
    changed["output_dir"] = str(done)
    changed["optimizer"]["lr"] = 5e-4
    (done / "recipe.yaml").write_text(dump_recipe(parse_recipe(changed)))
    (done / "metrics.jsonl").write_text('{"step": 1}\n')


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            out[rel] = "dir" if p.is_dir() else hashlib.sha1(p.read_bytes()).hexdigest()
    return out


@dataclass(frozen=True)
class Case:
    id: str
    args: list[str]  # formatted with {sb} (the sandbox) and {model} (the tiny model)
    names: list[str]  # each must appear in the message (formatted the same way)
    run_dir: str | None = None  # the only sandbox path the command may change (relative)
    xfail: str | None = None
    marks: list = field(default_factory=list)


TRAIN = ["train", "{sb}/recipe.yaml"]
EVAL = ["eval", "{model}", "--recipe", "{sb}/recipe.yaml"]
PROBE = ["probe", "entanglement", "--model", "{model}", "--data", "{sb}/pref.jsonl"]
MERGE = ["merge", "{model}", "{model}"]
NOT_OURS = "not created by tandem"

CASES = [
    # ---------------------------------------------------------------- train: recipe and --set
    Case("train-recipe-missing", ["train", "{sb}/nope.yaml"], ["nope.yaml", "not found"]),
    Case("train-duplicate-key", ["train", "{sb}/dup.yaml"], ["dup.yaml", "batch_size", "twice", "lines"]),
    Case("train-yaml-syntax", ["train", "{sb}/syntax.yaml"], ["syntax.yaml", "line"]),
    Case("train-set-not-a-number", [*TRAIN, "--set", "optimizer.lr=abc"], ["--set optimizer.lr=abc"]),
    Case("train-set-yaml-syntax", [*TRAIN, "--set", "optimizer.betas=[0.9,"], ["--set optimizer.betas=[0.9,"]),
    Case("train-set-no-equals", [*TRAIN, "--set", "optimizer.lr"], ["--set 'optimizer.lr'", "key.sub=value"]),
    Case("train-negative-lr", [*TRAIN, "--set", "optimizer.lr=-1"], ["--set optimizer.lr=-1", "optimizer.lr"]),
    Case("train-nan-lr", [*TRAIN, "--set", "optimizer.lr=.nan"], ["optimizer.lr"]),
    Case("train-zero-batch", [*TRAIN, "--set", "batching.batch_size=0"], ["batching.batch_size"]),
    Case("train-unknown-field", [*TRAIN, "--set", "optimizer.lrr=1e-4"], ["lrr"]),
    Case("train-unknown-method", [*TRAIN, "--set", "schedule.method=hbta"], ["hbta"]),
    Case("train-unknown-objective-argument", [*TRAIN, "--set", "objectives.sft.bogus=1"], ["objectives.sft", "bogus"]),
    # ---------------------------------------------------------------- train: data and model
    Case("train-data-missing", [*TRAIN, "--set", "data.sft.source={sb}/missing.jsonl"], ["{sb}/missing.jsonl", "not found"]),
    Case("train-data-not-utf8", [*TRAIN, "--set", "data.sft.source={sb}/latin1.jsonl"], ["latin1.jsonl:2", "UTF-8"], "run"),
    Case("train-data-broken-json", [*TRAIN, "--set", "data.sft.source={sb}/broken.jsonl"], ["broken.jsonl:2", "JSON"], "run"),
    Case("train-preference-data-to-sft", [*TRAIN, "--set", "data.sft.source={sb}/pref.jsonl"],
         ["pref.jsonl", "row 1", "chosen", "rejected"], "run"),
    Case("train-alpaca-as-preference", ["train", "{sb}/dpo.yaml", "--set", "data.preference.source={sb}/alpaca.jsonl"],
         ["alpaca.jsonl", "row 1", "instruction", "output"], "run"),
    Case("train-kto-rows", [*TRAIN, "--set", "data.sft.source={sb}/kto.jsonl"], ["kto.jsonl", "label"], "run"),
    Case("train-identical-pairs", ["train", "{sb}/dpo.yaml", "--set", "data.preference.source={sb}/same.jsonl"],
         ["same.jsonl", "chosen == rejected", "8"], "run"),
    Case("train-model-missing", [*TRAIN, "--set", "model.name_or_path={sb}/no-model"], ["{sb}/no-model", "not found"],
         "run"),
    # ---------------------------------------------------------------- train: run directory
    Case("train-overwrite-foreign-dir", [*TRAIN, "-o", "{sb}/user", "--overwrite"], ["{sb}/user", NOT_OURS]),
    Case("train-output-is-a-file", [*TRAIN, "-o", "{sb}/afile.txt"], ["{sb}/afile.txt", "not a directory"]),
    Case("train-resume-nothing", [*TRAIN, "--resume"], ["{sb}/run", "nothing to resume"]),
    Case("train-resume-and-overwrite", [*TRAIN, "-o", "{sb}/done", "--resume", "--overwrite"], ["--resume", "--overwrite"]),
    Case("train-existing-run", [*TRAIN, "-o", "{sb}/done"], ["{sb}/done", "--resume", "--overwrite"]),
    Case("train-resume-changed-recipe", [*TRAIN, "-o", "{sb}/done", "--resume"],
         ["{sb}/done", "optimizer.lr: 0.0005 -> 0.001"]),
    Case("train-allow-unsafe-change", [*TRAIN, "-o", "{sb}/done", "--resume", "--allow-change", "optimizer.lr"],
         ["--allow-change", "optimizer.lr"]),
    # ---------------------------------------------------------------- eval
    Case("eval-target-missing", ["eval", "{sb}/nothing-here"], ["{sb}/nothing-here", "not found"]),
    Case("eval-dir-without-recipe", ["eval", "{model}"], ["{model}", "--recipe"]),
    Case("eval-unknown-metric", [*EVAL, "--metrics", "bogus", "-o", "{sb}/ev"], ["bogus"]),
    Case("eval-bad-temperatures", [*EVAL, "--temperatures", "0,hot"], ["--temperatures", "0,hot"]),
    Case("eval-bad-set", [*EVAL, "--set", "eval.max_new_tokens=0"], ["--set eval.max_new_tokens=0", "max_new_tokens"]),
    Case("eval-untrained-recipe", ["eval", "{sb}/recipe.yaml"], ["{sb}/run/final", "train"]),
    Case("eval-out-foreign", [*EVAL, "-o", "{sb}/user"], ["{sb}/user", NOT_OURS]),
    Case("eval-out-is-a-file", [*EVAL, "-o", "{sb}/afile.txt"], ["{sb}/afile.txt", "not a directory"]),
    Case("eval-metric-without-input", [*EVAL, "--metrics", "perplexity", "-o", "{sb}/ev"], ["perplexity", "heldout"], "ev"),
    # ---------------------------------------------------------------- compare
    Case("compare-unknown-method", ["compare", "{sb}/recipe.yaml", "--methods", "sequential,hbta", "-o", "{sb}/cmp"], ["hbta"]),
    Case("compare-bad-seeds", ["compare", "{sb}/recipe.yaml", "--seeds", "0,one", "-o", "{sb}/cmp"], ["--seeds", "0,one"]),
    Case("compare-out-foreign", ["compare", "{sb}/recipe.yaml", "-o", "{sb}/user"], ["{sb}/user", NOT_OURS]),
    Case("compare-resume-nothing", ["compare", "{sb}/recipe.yaml", "-o", "{sb}/cmp", "--resume"], ["{sb}/cmp", "nothing to resume"]),
    Case("compare-existing", ["compare", "{sb}/recipe.yaml", "-o", "{sb}/done"], ["{sb}/done", "--resume", "--overwrite"]),
    Case("compare-data-missing", ["compare", "{sb}/recipe.yaml", "-o", "{sb}/cmp", "--set", "data.sft.source={sb}/gone.jsonl"],
         ["{sb}/gone.jsonl", "not found"]),
    Case("compare-bad-set", ["compare", "{sb}/recipe.yaml", "-o", "{sb}/cmp", "--set", "batching.batch_size=-2"],
         ["--set batching.batch_size=-2"]),
    Case("compare-model-missing", ["compare", "{sb}/recipe.yaml", "-o", "{sb}/cmp", "--set", "model.name_or_path={sb}/m0"],
         ["{sb}/m0", "not found"]),
    # ---------------------------------------------------------------- tax
    Case("tax-recipe-missing", ["tax", "{sb}/none.yaml"], ["none.yaml", "not found"]),
    Case("tax-no-reward-model", ["tax", "{sb}/tax.yaml", "--set", "tax.reward_model=null"], ["reward_model"]),
    Case("tax-tuned-missing", ["tax", "{sb}/tax.yaml", "--set", "tax.tuned={sb}/tuned"], ["tax.tuned", "{sb}/tuned"]),
    Case("tax-reward-model-missing", ["tax", "{sb}/tax.yaml", "--set", "tax.reward_model={sb}/rm"], ["reward_model", "{sb}/rm"]),
    Case("tax-out-foreign", ["tax", "{sb}/tax.yaml", "--set", "tax.out={sb}/user", "--overwrite"], ["{sb}/user", NOT_OURS]),
    Case("tax-resume-nothing", ["tax", "{sb}/tax.yaml", "--resume"], ["{sb}/tax", "nothing to resume"]),
    Case("tax-existing", ["tax", "{sb}/tax.yaml", "--set", "tax.out={sb}/done"], ["{sb}/done", "--resume", "--overwrite"]),
    # ---------------------------------------------------------------- merge
    Case("merge-alpha-nan", [*MERGE, "--alpha", "nan", "-o", "{sb}/m"], ["--alpha nan", "finite"]),
    Case("merge-alphas-nan", [*MERGE, "--alphas", "0.1,nan,0.5", "-o", "{sb}/m"], ["--alphas nan", "finite"]),
    Case("merge-head-alpha-inf", [*MERGE, "--alpha", "0.5", "--head-alpha", "inf", "-o", "{sb}/m"], ["--head-alpha inf"]),
    Case("merge-alphas-not-numbers", [*MERGE, "--alphas", "a,b", "-o", "{sb}/m"], ["--alphas", "'a,b'"]),
    Case("merge-both-alphas", [*MERGE, "--alpha", "0.5", "--alphas", "0.1,0.2", "-o", "{sb}/m"], ["--alpha", "--alphas"]),
    Case("merge-base-missing", ["merge", "{sb}/no-base", "{model}", "--alpha", "0.5", "-o", "{sb}/m"], ["{sb}/no-base", "not found"]),
    Case("merge-overwrite-foreign", [*MERGE, "--alpha", "0.5", "-o", "{sb}/user", "--overwrite"], ["{sb}/user", NOT_OURS]),
    Case("merge-out-is-a-file", [*MERGE, "--alpha", "0.5", "-o", "{sb}/afile.txt", "--overwrite"], ["{sb}/afile.txt"]),
    Case("merge-existing-without-overwrite", [*MERGE, "--alpha", "0.5", "-o", "{sb}/done"], ["{sb}/done", "--overwrite"]),
    Case("merge-bad-groups", [*MERGE, "--alphas", "0.1,0.2", "--groups", "bogus", "-o", "{sb}/m"], ["bogus"]),
    # ---------------------------------------------------------------- probe
    Case("probe-model-missing", ["probe", "entanglement", "-m", "{sb}/no-model", "-d", "{sb}/pref.jsonl"], ["--model", "{sb}/no-model", "not found"]),
    Case("probe-data-missing", ["probe", "entanglement", "-m", "{model}", "-d", "{sb}/none.jsonl"], ["--data", "{sb}/none.jsonl", "not found"]),
    Case("probe-ratio-zero", [*PROBE, "--ratio", "0"], ["--ratio"]),
    Case("probe-out-foreign", [*PROBE, "-o", "{sb}/user"], ["{sb}/user", NOT_OURS]),
    Case("probe-sft-data", ["probe", "entanglement", "-m", "{model}", "-d", "{sb}/sft.jsonl"], ["--data", "no preference pairs"]),
    Case("probe-bad-params", [*PROBE, "--params", "layers\\.(", "-o", "{sb}/pr"], ["--params"]),
    # ---------------------------------------------------------------- data inspect, models info, report
    Case("inspect-missing", ["data", "inspect", "{sb}/missing.jsonl"], ["{sb}/missing.jsonl", "not found"]),
    Case("inspect-not-utf8", ["data", "inspect", "{sb}/latin1.jsonl"], ["latin1.jsonl:2", "UTF-8"]),
    Case("inspect-broken-json", ["data", "inspect", "{sb}/broken.jsonl"], ["broken.jsonl:2", "JSON"]),
    Case("inspect-unknown-format", ["data", "inspect", "{sb}/sft.jsonl", "--format", "bogus"], ["bogus"]),
    Case("inspect-tokenizer-missing", ["data", "inspect", "{sb}/sft.jsonl", "--tokenizer", "{sb}/no-tok"], ["{sb}/no-tok", "not found"]),
    Case("models-info-missing", ["models", "info", "{sb}/no-model"], ["{sb}/no-model", "not found"]),
    Case("report-missing", ["report", "{sb}/no-run"], ["{sb}/no-run", "not found"]),
    # ---------------------------------------------------------------- quickstart and testbed output directories
    Case("quickstart-user-files-in-hbat", ["quickstart", "-o", "{sb}/qs", "--model", "{model}"], ["{sb}/qs", NOT_OURS]),
    Case("quickstart-output-foreign", ["quickstart", "-o", "{sb}/user", "--model", "{model}"], ["{sb}/user", NOT_OURS]),
    Case("quickstart-output-is-a-file", ["quickstart", "-o", "{sb}/afile.txt", "--model", "{model}"], ["{sb}/afile.txt"]),
    Case("quickstart-model-missing", ["quickstart", "-o", "{sb}/q2", "--model", "{sb}/no-model"], ["--model", "{sb}/no-model"]),
    Case("quickstart-no-overwrite", ["quickstart", "-o", "{sb}/done", "--model", "{model}", "--no-overwrite"],
         ["{sb}/done", "--overwrite"]),
    Case("quickstart-zero-examples", ["quickstart", "-o", "{sb}/q3", "--n-train", "0"], ["--n-train"]),
    Case("testbed-output-foreign", ["testbed", "{sb}/user"], ["{sb}/user", NOT_OURS]),
]


def _params() -> list:
    return [pytest.param(c, id=c.id, marks=list(c.marks) + ([pytest.mark.xfail(strict=True, reason=c.xfail)]
                                                             if c.xfail else [])) for c in CASES]


@pytest.mark.parametrize("case", _params())
def test_bad_input_exits_2_with_one_line_naming_it(case: Case, tmp_path, tiny_model_dir, monkeypatch):
    sb = tmp_path / "sb"
    sb.mkdir()
    make_sandbox(sb, tiny_model_dir)
    monkeypatch.chdir(sb)  # a default output path would land in the sandbox and be caught
    before = snapshot(sb)
    fmt = {"sb": str(sb), "model": str(tiny_model_dir)}
    args = [a.format(**fmt) for a in case.args]
    res = CliRunner().invoke(app, args)
    out = res.output
    if os.environ.get("SHOW_BAD_INPUTS"):
        print(f"\n[{case.id}] {out.strip().splitlines()[-1]}")
    assert res.exit_code == 2, f"exit {res.exit_code}: {out}\n{res.exception!r}"
    assert "Traceback" not in out, out
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    if errors:  # tandem's own message: one line
        assert len(errors) == 1, out
        where = errors[0]
    else:  # a command-line usage error, reported by click
        assert "Invalid value" in out or "Usage" in out, out
        where = " ".join(out.replace("│", " ").split())
    for name in case.names:
        assert name.format(**fmt) in where, f"{name!r} not in: {out}"
    after = snapshot(sb)
    allowed = case.run_dir
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    outside = sorted(k for k in changed if allowed is None or not (k == allowed or k.startswith(allowed + "/")))
    assert not outside, f"changed outside the run directory: {outside}"


def test_the_table_is_large_and_covers_every_command():
    assert len(CASES) >= 40
    commands = {c.args[0] for c in CASES}
    assert {"train", "eval", "compare", "tax", "merge", "probe", "data", "models", "quickstart"} <= commands
    assert len({c.id for c in CASES}) == len(CASES)
