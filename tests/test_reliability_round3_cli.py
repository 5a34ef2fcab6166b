"""Issue 28 through the real CLI, table-driven like tests/test_cli_bad_inputs.py: each case must end with exit code 2,
one ``error:`` line naming the file, field or flag at fault (and never echoing a secret), no traceback, and nothing
written or deleted in the sandbox outside the case's own run directory -- for the data-loss cases, every input file
is still there byte for byte. The sandbox of tests/test_cli_bad_inputs.py is extended with inputs kept inside run
directories, broken model directories, a changed data file under a run, hostile YAML and a user's ``.tandem-lock``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from test_cli_bad_inputs import NOT_OURS, TRAIN, make_sandbox, recipe_raw

from tandem.cli.main import app
from tandem.config.recipe import dump_recipe, parse_recipe
from tandem.io.fingerprint import record_fingerprints
from tandem.io.rundir import write_marker


@pytest.fixture(autouse=True)
def no_debug(monkeypatch, one_thread):
    monkeypatch.delenv("TANDEM_DEBUG", raising=False)


def _model_copy(model: Path, dest: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(model, dest)
    for name in drop:
        (dest / name).unlink()
    return dest


def _dump(path: Path, raw: dict) -> None:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def make_round3_sandbox(sb: Path, model: Path) -> None:
    make_sandbox(sb, model)
    text = (sb / "recipe.yaml").read_text()
    # inputs that live inside tandem's own directories
    _model_copy(model, sb / "done" / "final")
    shutil.copy(sb / "sft.jsonl", sb / "done" / "data.jsonl")
    tb = sb / "tb"  # a testbed: its model and data are inputs of the recipe inside it
    tb.mkdir()
    write_marker(tb, "testbed")
    _model_copy(model, tb / "model")
    (tb / "data").mkdir()
    shutil.copy(sb / "sft.jsonl", tb / "data" / "sft.jsonl")
    raw = recipe_raw(sb, tb / "model")
    raw["data"]["sft"]["source"] = str(tb / "data" / "sft.jsonl")
    raw["output_dir"] = str(tb)
    _dump(tb / "recipe.yaml", raw)
    md = sb / "mdone"  # an earlier merge holding the base model the next merge reads
    md.mkdir()
    write_marker(md, "merge")
    (md / "tandem_merge.json").write_text("{}\n")
    _model_copy(model, md / "base")
    (sb / "lockonly").mkdir()  # a user's own file that happens to be named .tandem-lock
    (sb / "lockonly" / ".tandem-lock").write_text("my lock notes, not tandem's\n")
    # a run whose data changed after it started
    shutil.copy(sb / "sft.jsonl", sb / "fpdata.jsonl")
    fp = recipe_raw(sb, model)
    fp["data"]["sft"]["source"] = str(sb / "fpdata.jsonl")
    fp["output_dir"] = str(sb / "fp")
    _dump(sb / "fp.yaml", fp)
    (sb / "fp").mkdir()
    write_marker(sb / "fp", "train")
    (sb / "fp" / "recipe.yaml").write_text(dump_recipe(parse_recipe(fp)))
    record_fingerprints(sb / "fp", {"data.sft": str(sb / "fpdata.jsonl")})
    with open(sb / "fpdata.jsonl", "a") as f:
        f.write(json.dumps({"prompt": "an extra row", "response": "added after the kill"}) + "\n")
    # broken model directories
    _model_copy(model, sb / "m-noconfig", drop=("config.json",))
    _model_copy(model, sb / "m-notok", drop=("tokenizer.json", "tokenizer_config.json"))
    trunc = _model_copy(model, sb / "m-trunc") / "model.safetensors"
    trunc.write_bytes(trunc.read_bytes()[: trunc.stat().st_size // 2])
    nan = _model_copy(model, sb / "m-nan") / "model.safetensors"
    tensors = load_file(str(nan))
    first = sorted(tensors)[0]
    tensors[first] = tensors[first].clone().fill_(float("nan"))
    save_file(tensors, str(nan), metadata={"format": "pt"})
    # hostile YAML
    (sb / "deep.yaml").write_text(text + "extra: " + "[" * 20000 + "]" * 20000 + "\n")
    (sb / "bigint.yaml").write_text(text.replace("seed: 0\n", "seed: " + "9" * 5000 + "\n"))
    bomb = "\n".join([f"    l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9 if i else ["x"] * 9) + "]" for i in range(8)])
    (sb / "bomb.yaml").write_text(text.replace("  sft:\n    name: sft\n", "  sft:\n    name: sft\n" + bomb + "\n", 1))
    os.symlink("loop.jsonl", sb / "loop.jsonl")  # a link to itself
    # data content
    (sb / "dupkeys.jsonl").write_text('{"prompt": "Say 1.", "prompt": "Say 2.", "response": "1"}\n')
    (sb / "nul.jsonl").write_text('{"prompt": "Say 1.", "response": "1\\u0000"}\n')
    rows = [{"prompt": f"Q{i}", "response": "A", "chosen": "A", "rejected": "B"} for i in range(8)]
    (sb / "ambiguous.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (sb / "noprompt.jsonl").write_text("".join(json.dumps({"prompt": "", "response": f"r{i}"}) + "\n" for i in range(8)))


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: a directory, a link (its target) or a file (its SHA-1): byte for byte."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            out[rel] = (f"link:{os.readlink(p)}" if p.is_symlink() else "dir" if p.is_dir()
                        else hashlib.sha1(p.read_bytes()).hexdigest())
    return out


@dataclass(frozen=True)
class Case:
    id: str
    args: list[str]  # formatted with {sb} (the sandbox) and {model} (the tiny model)
    names: list[str]  # each must appear in the error line (formatted the same way)
    run_dir: str | None = None  # the only sandbox path the command may change (relative)
    absent: list[str] = field(default_factory=list)  # must not appear anywhere in the output (secrets)


MODEL_IN = ["--set", "model.name_or_path={sb}/done/final"]
KEY = "Xy7Qw2Lp9Rt4Zk8Mn3Bv6Cd1"  # no known key format: refused for being a key, not a variable name
PROBE = ["probe", "entanglement", "-d", "{sb}/pref.jsonl", "-m"]
CASES = [
    # ---------------------------------------------------------------- data loss: --overwrite keeps the inputs
    Case("train-overwrite-model-inside-run", [*TRAIN, "-o", "{sb}/done", "--overwrite", *MODEL_IN],
         ["{sb}/done", "model.name_or_path", "{sb}/done/final", "inside"]),
    Case("train-overwrite-data-inside-run", [*TRAIN, "-o", "{sb}/done", "--overwrite", "--set",
                                             "data.sft.source={sb}/done/data.jsonl"], ["data.sft", "{sb}/done/data.jsonl"]),
    Case("train-overwrite-testbed", ["train", "{sb}/tb/recipe.yaml", "-o", "{sb}/tb", "--overwrite"],
         ["{sb}/tb", "inside"]),
    Case("compare-overwrite-data-inside", ["compare", "{sb}/recipe.yaml", "--methods", "sft", "-o", "{sb}/done",
                                           "--overwrite", "--set", "data.sft.source={sb}/done/data.jsonl"],
         ["{sb}/done/data.jsonl", "inside"]),
    Case("merge-overwrite-base-inside", ["merge", "{sb}/mdone/base", "{model}", "--alpha", "0.5", "-o", "{sb}/mdone",
                                         "--overwrite"], ["base model", "{sb}/mdone/base"]),
    Case("train-into-users-lock-file-dir", [*TRAIN, "-o", "{sb}/lockonly"], ["{sb}/lockonly", NOT_OURS]),
    Case("compare-resume-into-a-train-run", ["compare", "{sb}/recipe.yaml", "--methods", "sft", "-o", "{sb}/done",
                                             "--resume"], ["{sb}/done", "tandem train", "tandem compare"]),
    Case("eval-out-into-a-train-run", ["eval", "{model}", "--recipe", "{sb}/recipe.yaml", "-o", "{sb}/done"],
         ["{sb}/done", "tandem train", "tandem eval"]),
    Case("train-resume-changed-data", ["train", "{sb}/fp.yaml", "--resume"],
         ["{sb}/fp", "data.sft", "{sb}/fpdata.jsonl", "changed", "--allow-change does not cover data"]),
    Case("train-resume-changed-data-allow-change", ["train", "{sb}/fp.yaml", "--resume", "--allow-change",
                                                    "schedule.max_steps_per_stage"], ["data.sft", "{sb}/fpdata.jsonl"]),
    # ---------------------------------------------------------------- secrets: refused, never echoed
    Case("train-api-key-in-api-key-env", [*TRAIN, "--set", f"eval.judge.api_key_env={KEY}"],
         ["eval.judge.api_key_env", "API key"], absent=[KEY]),
    Case("train-openai-key-in-api-key-env", [*TRAIN, "--set", "eval.judge.api_key_env=sk-proj-AbCdEfGh12345678"],
         ["eval.judge.api_key_env"], absent=["AbCdEfGh12345678"]),
    Case("train-password-in-base-url", [*TRAIN, "--set", "eval.judge.base_url=https://bob:hunter2hunter2@api.example.com"],
         ["eval.judge.base_url", "password"], absent=["hunter2hunter2"]),
    # ---------------------------------------------------------------- tracebacks -> one line
    Case("train-yaml-20000-levels", ["train", "{sb}/deep.yaml"], ["deep.yaml", "nested"]),
    Case("train-yaml-5000-digit-int", ["train", "{sb}/bigint.yaml"], ["bigint.yaml", "5000 digits"]),
    Case("train-yaml-alias-bomb", ["train", "{sb}/bomb.yaml"], ["bomb.yaml", "alias"]),
    Case("train-lora-targets-nothing", [*TRAIN, "--set", "model.lora={{r: 4, target_modules: [nope_proj]}}"],
         ["model.lora.target_modules", "nope_proj", "q_proj"], "run"),
    Case("train-lora-absurd-rank", [*TRAIN, "--set", "model.lora={{r: 100000}}"], ["model.lora.r 100000", "hidden_size"],
         "run"),
    Case("train-model-without-config", [*TRAIN, "--set", "model.name_or_path={sb}/m-noconfig"],
         ["{sb}/m-noconfig", "config.json"], "run"),
    Case("train-model-without-tokenizer", [*TRAIN, "--set", "model.name_or_path={sb}/m-notok"],
         ["{sb}/m-notok", "tokenizer"], "run"),
    Case("train-model-truncated-safetensors", [*TRAIN, "--set", "model.name_or_path={sb}/m-trunc"],
         ["{sb}/m-trunc/model.safetensors", "truncated"], "run"),
    Case("train-nan-base-model", [*TRAIN, "--set", "model.name_or_path={sb}/m-nan"], ["{sb}/m-nan", "NaN"], "run"),
    Case("probe-nan-model", [*PROBE, "{sb}/m-nan", "-o", "{sb}/pr"], ["--model", "{sb}/m-nan", "NaN"]),
    Case("probe-truncated-model", [*PROBE, "{sb}/m-trunc", "-o", "{sb}/pr"], ["--model", "m-trunc", "truncated"]),
    Case("eval-temperatures-nan", ["eval", "{model}", "--recipe", "{sb}/recipe.yaml", "--temperatures", "0,nan"],
         ["--temperatures", "nan", "finite"]),
    Case("train-output-name-too-long", [*TRAIN, "-o", "{sb}/" + "n" * 300], ["too long"]),
    Case("merge-nan-base", ["merge", "{sb}/m-nan", "{model}", "--alpha", "0.5", "--groups", "block2", "-o", "{sb}/mm"], ["{sb}/m-nan", "NaN"]),
    # ---------------------------------------------------------------- silent accepts, unclear errors
    Case("train-seed-true", [*TRAIN, "--set", "seed=true"], ["--set seed=true", "boolean"]),
    Case("train-beta-inf", ["train", "{sb}/dpo.yaml", "--set", "objectives.preference.beta=.inf"],
         ["objectives.preference", "beta", "finite"]),
    Case("train-beta-abc", ["train", "{sb}/dpo.yaml", "--set", "objectives.preference.beta=abc"],
         ["objectives.preference.beta", "'abc'", "not a number"]),
    Case("train-freeze-percent-150", [*TRAIN, "--set", "hbat.freeze.percent=150"], ["hbat.freeze", "percent", "150"]),
    Case("train-regularizer-percent-150", [*TRAIN, "--set", "regularizer={{name: freeze, percent: 150}}"],
         ["regularizer", "percent", "150"]),
    Case("train-batch-larger-than-data", [*TRAIN, "--set", "batching.batch_size=64"],
         ["batching.batch_size 64", "{sb}/sft.jsonl", "16"], "run"),
    Case("train-parts-larger-than-data", [*TRAIN, "--set", "schedule.method=hbat", "--set", "schedule.parts=1000"],
         ["schedule.parts 1000", "16"], "run"),
    Case("train-data-symlink-loop", [*TRAIN, "--set", "data.sft.source={sb}/loop.jsonl"], ["{sb}/loop.jsonl", "loop"]),
    Case("train-data-dev-zero", [*TRAIN, "--set", "data.sft.source=/dev/zero"], ["/dev/zero", "not a regular file"]),
    Case("train-data-duplicate-json-key", [*TRAIN, "--set", "data.sft.source={sb}/dupkeys.jsonl"],
         ["{sb}/dupkeys.jsonl:1", "'prompt'", "twice"], "run"),
    Case("train-data-nul-character", [*TRAIN, "--set", "data.sft.source={sb}/nul.jsonl"], ["{sb}/nul.jsonl:1", "NUL"],
         "run"),
    Case("train-data-row-both-reply-and-pair", [*TRAIN, "--set", "data.sft.source={sb}/ambiguous.jsonl"],
         ["ambiguous.jsonl", "ambiguous", "response", "chosen"], "run"),
    Case("train-data-all-prompts-empty", [*TRAIN, "--set", "data.sft.source={sb}/noprompt.jsonl"],
         ["data.sft", "{sb}/noprompt.jsonl", "prompts are empty"], "run"),
    Case("train-data-truncated-past-threshold", [*TRAIN, "--set", "data.max_length=8", "--set", "data.max_truncated=0.5"],
         ["data.sft", "{sb}/sft.jsonl", "data.max_truncated 0.5"], "run"),
    Case("train-null-field-is-not-missing", [*TRAIN, "--set", "data.sft.source=null"],
         ["--set data.sft.source=null", "null; give a value"]),
    Case("merge-alpha-outside-0-1", ["merge", "{model}", "{model}", "--alpha", "1.5", "-o", "{sb}/mm"],
         ["--alpha 1.5", "--extrapolate"]),
    Case("merge-alphas-outside-0-1", ["merge", "{model}", "{model}", "--alphas", "0.2,-0.5", "-o", "{sb}/mm"],
         ["--alphas -0.5", "--extrapolate"]),
    Case("tax-sweep-outside-0-1", ["tax", "{sb}/tax.yaml", "--set", "tax.sweep=[0.5, 1.5]"], ["tax.sweep"]),
    Case("tax-causal-lm-as-reward-model", ["tax", "{sb}/tax.yaml", "--no-progress"], ["reward model", "{model}", "head"],
         "tax"),
    Case("probe-chosen-equals-rejected", ["probe", "entanglement", "-m", "{model}", "-d", "{sb}/same.jsonl", "-o",
                                          "{sb}/pr"], ["--data", "chosen == rejected"]),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_round3_bad_input_exits_2_with_one_line_naming_it(case: Case, tmp_path, tiny_model_dir, monkeypatch):
    sb = tmp_path / "sb"
    sb.mkdir()
    make_round3_sandbox(sb, tiny_model_dir)
    monkeypatch.chdir(sb)
    before = snapshot(sb)
    fmt = {"sb": str(sb), "model": str(tiny_model_dir)}
    res = CliRunner().invoke(app, [a.format(**fmt) for a in case.args])
    out = res.output
    assert res.exit_code == 2, f"exit {res.exit_code}: {out}\n{res.exception!r}"
    assert "Traceback" not in out, out
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    if os.environ.get("SHOW_BAD_INPUTS"):
        print(f"\n[{case.id}] {errors[-1] if errors else out.strip()[-300:]}")
    assert len(errors) == 1, out
    for name in case.names:
        assert name.format(**fmt) in errors[0], f"{name!r} not in: {errors[0]}"
    for secret in case.absent:
        assert secret not in out, f"the secret is echoed: {out}"
    after = snapshot(sb)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    allowed = case.run_dir
    outside = sorted(k for k in changed if allowed is None or not (k == allowed or k.startswith(allowed + "/")))
    assert not outside, f"changed outside the run directory: {outside}"


def test_the_round3_table_covers_the_issue():
    ids = {c.id for c in CASES}
    assert len(ids) == len(CASES) >= 35
    assert {c.args[0] for c in CASES} >= {"train", "compare", "merge", "eval", "probe", "tax"}
