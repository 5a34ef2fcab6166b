"""Table of bad inputs at the library level (issue 13): each is refused with its own exception type and a
message that names the file/line/field or the --set flag, in one line for the data and run-dir errors.

A case is ``(id, make, call, exc, needles)``: ``make(tmp)`` writes the input and returns what ``call`` needs;
``call(arg)`` must raise ``exc``; every needle (``{tmp}`` is replaced by the temp dir) must be in the message.
"""

from __future__ import annotations

import json

import pytest

from tandem.config.recipe import RecipeError, load_recipe
from tandem.data import DataError, DataFileNotFound, load_examples
from tandem.io.rundir import RunDirError, RunLock, prepare_run_dir
from tandem.merging.groups import tensor_alphas
from tandem.merging.lerp import Merger

BASE = """\
output_dir: runs/x
model:
  name_or_path: some/model
data:
  sft: {source: a.jsonl}
objectives:
  sft: {name: sft}
"""


def recipe(extra: str = "", overrides: list[str] | None = None):
    def make(tmp):
        p = tmp / "r.yaml"
        p.write_text(BASE + extra)
        return p, overrides or []

    return make


def load(arg):
    path, overrides = arg
    load_recipe(path, overrides)


def data_file(rows, name="d.jsonl", raw: bytes | None = None):
    def make(tmp):
        p = tmp / name
        if raw is not None:
            p.write_bytes(raw)
        else:
            p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return p

    return make


def as_role(role, **kw):
    return lambda p: load_examples(str(p), role=role, **kw)


def foreign_dir(tmp):
    d = tmp / "data"
    d.mkdir()
    (d / "train.jsonl").write_text("{}\n")
    return d


def tandem_dir(tmp):
    d = tmp / "run"
    prepare_run_dir(d, resume=False, overwrite=False, command="train")
    (d / "metrics.jsonl").write_text("{}\n")
    return d


def _names():
    return [f"model.layers.{i}.mlp.weight" for i in range(3)] + ["model.embed_tokens.weight", "lm_head.weight"]


ALPACA = {"instruction": "Say hi.", "input": "", "output": "Hi."}
PAIR = {"prompt": "Pick.", "chosen": "Seven.", "rejected": "No."}

CASES = [
    # --- recipes: typos, duplicates, ranges, --set
    ("recipe-typo", recipe("optimizer:\n  lrr: 1.0e-5\n"), load, RecipeError, ["{tmp}/r.yaml, line 9", "optimizer.lrr"]),
    ("recipe-top-typo", recipe("sedd: 3\n"), load, RecipeError, ["line 8", "unknown key 'sedd'"]),
    ("recipe-duplicate", recipe("batching:\n  batch_size: 4\n  batch_size: 8\n"), load, RecipeError,
     ["{tmp}/r.yaml", "'batch_size'", "lines 9 and 10"]),
    ("recipe-duplicate-top", recipe("seed: 1\nseed: 2\n"), load, RecipeError, ["'seed'", "lines 8 and 9"]),
    ("recipe-negative-lr", recipe("optimizer: {lr: -1.0e-5}\n"), load, RecipeError, ["line 8", "optimizer.lr", "greater than 0"]),
    ("recipe-nan-lr", recipe("optimizer: {lr: .nan}\n"), load, RecipeError, ["optimizer.lr", "finite"]),
    ("recipe-beta-1", recipe("optimizer: {betas: [0.9, 1.0]}\n"), load, RecipeError, ["optimizer.betas", "[0, 1)"]),
    ("recipe-eps-0", recipe("optimizer: {eps: 0}\n"), load, RecipeError, ["optimizer.eps"]),
    ("recipe-top-p", recipe("eval: {top_p: 1.5}\n"), load, RecipeError, ["eval.top_p"]),
    ("recipe-epochs-0", recipe("schedule: {epochs: 0}\n"), load, RecipeError, ["schedule.epochs"]),
    ("recipe-logging-every", recipe("logging: {every: 0}\n"), load, RecipeError, ["logging.every"]),
    ("recipe-tax-sweep-inf", recipe("tax: {sweep: [0.0, .inf]}\n"), load, RecipeError, ["tax.sweep"]),
    ("recipe-missing", lambda tmp: (tmp / "nope.yaml", []), load, RecipeError, ["{tmp}/nope.yaml", "not found"]),
    ("set-not-a-number", recipe(overrides=["optimizer.lr=abc"]), load, RecipeError,
     ["--set optimizer.lr=abc", "'optimizer.lr'"]),
    ("set-bad-yaml", recipe(overrides=["optimizer.lr=[1"]), load, RecipeError, ["--set optimizer.lr=[1", "not valid YAML"]),
    ("set-no-equals", recipe(overrides=["optimizer.lr"]), load, RecipeError, ["--set 'optimizer.lr'", "key.sub=value"]),
    ("set-unknown-key", recipe(overrides=["optimizer.lrr=1"]), load, RecipeError, ["--set optimizer.lrr=1", "unknown key"]),
    ("set-negative-range", recipe(overrides=["eval.max_new_tokens=0"]), load, RecipeError,
     ["--set eval.max_new_tokens=0", "eval.max_new_tokens"]),
    # --- data against its role
    ("alpaca-as-preference", data_file([ALPACA]), as_role("preference"), DataError,
     ["{tmp}/d.jsonl: row 1", "'alpaca'", "['input', 'instruction', 'output']"]),
    ("preference-as-sft", data_file([PAIR]), as_role("sft"), DataError,
     ["{tmp}/d.jsonl: row 1", "'preference'", "['chosen', 'prompt', 'rejected']"]),
    ("kto-unpaired", data_file([{"prompt": "q", "completion": "c", "label": False}]), as_role("preference"), DataError,
     ["row 1", "KTO-style", "'label'"]),
    ("all-identical", data_file([{**PAIR, "rejected": "Seven."}] * 2 + [{**PAIR, "chosen": ""}]), as_role("preference"),
     DataError, ["{tmp}/d.jsonl", "all 3 rows", "2 identical", "1 empty_chosen"]),
    ("missing-field-later-row", data_file([ALPACA, {"instruction": "x"}]), as_role("sft"), DataError,
     ["{tmp}/d.jsonl: row 2", "'output'", "['instruction']"]),
    ("non-utf8", data_file([], raw=b'{"prompt": "a", "response": "b"}\n{"prompt": "\xff"}\n'), as_role("sft"), DataError,
     ["{tmp}/d.jsonl:2", "UTF-8"]),
    ("malformed-json", data_file([], raw=b'{"prompt": "a", "response": "b"}\n{"prompt": \n'), as_role("sft"), DataError,
     ["{tmp}/d.jsonl:2", "malformed JSON"]),
    ("oversized-record", data_file([{"prompt": "x" * 5000, "response": "y"}]), as_role("sft", max_record_bytes=1000),
     DataError, ["{tmp}/d.jsonl:1", "size cap"]),
    ("missing-data-file", lambda tmp: tmp / "no" / "train.jsonl", as_role("sft"), DataFileNotFound,
     ["data file not found: {tmp}/no/train.jsonl"]),
    ("not-an-object", data_file([], raw=b'{"prompt": "a", "response": "b"}\n[1, 2]\n'), as_role("sft"), DataError,
     ["{tmp}/d.jsonl:2", "JSON object"]),
    # --- merge alphas
    ("nan-alpha", lambda tmp: None, lambda _: tensor_alphas(_names(), "block3", [0.1, float("nan"), 0.3]),
     ValueError, ["alphas", "nan", "group 1"]),
    ("inf-head-alpha", lambda tmp: None, lambda _: tensor_alphas(_names(), "block3", [0.1, 0.2, 0.3], float("inf")),
     ValueError, ["head_alpha", "inf"]),
    ("nan-global-merge", lambda tmp: None,
     lambda _: Merger({"w": __import__("torch").zeros(2)}, {"w": __import__("torch").ones(2)}).merged_state_dict(float("nan")),
     ValueError, ["alpha", "nan"]),
    # --- run directories
    ("overwrite-foreign-dir", foreign_dir, lambda d: prepare_run_dir(d, resume=False, overwrite=True, command="train"),
     RunDirError, ["{tmp}/data", "not created by tandem"]),
    ("resume-foreign-dir", foreign_dir, lambda d: prepare_run_dir(d, resume=True, overwrite=False, command="train"),
     RunDirError, ["{tmp}/data", "not created by tandem"]),
    ("run-dir-no-flag", tandem_dir, lambda d: prepare_run_dir(d, resume=False, overwrite=False, command="train"),
     RunDirError, ["{tmp}/run", "--resume", "--overwrite"]),
    ("resume-nothing", lambda tmp: tmp / "none", lambda d: prepare_run_dir(d, resume=True, overwrite=False, command="train"),
     RunDirError, ["{tmp}/none", "nothing to resume"]),
    ("lock-foreign-dir", foreign_dir, lambda d: RunLock(d).acquire(), RunDirError, ["{tmp}/data", "not created by tandem"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_a_message_naming_where(tmp_path, case):
    _, make, call, exc, needles = case
    arg = make(tmp_path)
    with pytest.raises(exc) as e:
        call(arg)
    msg = str(e.value)
    for needle in needles:
        assert needle.replace("{tmp}", str(tmp_path)) in msg, (needle, msg)
    if not isinstance(e.value, RecipeError) or "invalid recipe" not in msg:
        assert "\n" not in msg and "Traceback" not in msg


def test_the_table_is_large_enough():
    assert len(CASES) >= 20


def test_nothing_outside_was_written_or_deleted(tmp_path):
    d = foreign_dir(tmp_path)
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    for flags in ((False, True), (True, False), (False, False)):
        with pytest.raises(RunDirError):
            prepare_run_dir(d, resume=flags[0], overwrite=flags[1], command="train")
    with pytest.raises(RunDirError):
        RunLock(d).acquire()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before
