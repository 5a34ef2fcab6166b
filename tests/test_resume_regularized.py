"""Kill-and-resume of runs that carry a regularizer gives the same run as an uninterrupted one.

A child process trains with ``TANDEM_FAULT_KILL_AFTER_STEP=N`` (SIGKILL after global step N, no cleanup), then
``--resume`` finishes it. Compared with an uninterrupted child run of the same recipe: bit-identical final and
stage-end weights, identical importance.json (modified EWC), identical regularizer state in the last
checkpoint, and the same training rows (loss and penalty) with no step logged twice.

- hbat (modified EWC), killed after step 6: in stage 02-pref-1 after its checkpoint at step 5, so the resume is
  mid-stage with the EWC anchor and importance restored from the checkpoint, not recomputed;
- l2-anchor (anchor at the preference start), killed after step 6: in 02-pref after its checkpoint at step 5,
  so the resume is mid-stage and the anchor (the end of 01-sft) must come back from the checkpoint;
- l2-anchor with ``anchor: initial, stages: all``, killed after step 4: first step of 02-pref, resumed from the
  end-of-01-sft checkpoint, so ``before_stage`` runs again and must keep the restored anchor (the initial
  weights), not take a new one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers_entry import TRAIN_SCRIPT
from helpers_recipe import base_raw, with_overrides
from safetensors.torch import load_file

from tandem.config.recipe import dump_recipe

CASES = {
    "hbat": dict(kill_after=6, over={"schedule.parts": 2, "hbat.ewc": {"lam": 1.0, "f_max": 50.0, "normalise": "zscore",
                                                                      "temperature": 1.0}}),
    "l2-anchor": dict(kill_after=6, over={"hbat.l2": {"lam": 1.0}}),
    "l2-anchor-initial": dict(kill_after=4, over={"hbat.l2": {"lam": 1.0, "anchor": "initial", "stages": "all"}}),
}
COMMON = {"schedule.max_steps_per_stage": 3, "checkpoint.every": 2, "checkpoint.keep": 2, "checkpoint.stage_weights": True,
          "logging.tensorboard": False, "data.val_size": 4}


def run_children(jobs: list[tuple[Path, str, int | None]]) -> list[subprocess.CompletedProcess]:
    """Train ``(recipe, "fresh" | "resume", kill_after)`` jobs in parallel child processes; their results in order."""
    procs = []
    for recipe_path, mode, kill_after in jobs:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop("TANDEM_FAULT_KILL_AFTER_STEP", None)
        if kill_after is not None:
            env["TANDEM_FAULT_KILL_AFTER_STEP"] = str(kill_after)
        args = [sys.executable, "-c", TRAIN_SCRIPT, str(recipe_path), mode]
        procs.append((args, subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    out = []
    for args, p in procs:
        stdout, stderr = p.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(args, p.returncode, stdout, stderr))
    return out


def run_child(recipe_path: Path, mode: str, kill_after: int | None = None) -> subprocess.CompletedProcess:
    return run_children([(recipe_path, mode, kill_after)])[0]


def train_rows(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    drop = ("tokens_per_s",)  # wall-clock dependent
    return [{k: v for k, v in r.items() if k not in drop} for r in rows if r["split"] == "train"]


def assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.equal(a[k], b[k]), (what, k)


def assert_same_state(a, b, what: str) -> None:
    """Nested regularizer state dicts: equal structure, bit-identical tensors."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), what
        for k in a:
            assert_same_state(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{what}[{i}]")
    elif torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), what
    else:
        assert a == b, what


@pytest.fixture(scope="module", params=sorted(CASES))
def straight_and_resumed(request, tmp_path_factory, tiny_model_dir, synthetic_files):
    case = CASES[request.param]
    method = request.param.removesuffix("-initial")
    tmp = tmp_path_factory.mktemp(method)
    paths = {}
    for name in ("straight", "killed"):
        r = with_overrides(base_raw(tmp / name, tiny_model_dir, synthetic_files, method), {**COMMON, **case["over"]})
        paths[name] = tmp / f"{name}.yaml"
        paths[name].write_text(dump_recipe(r))
    # the uninterrupted and the killed run side by side (one thread each)
    straight, killed = run_children([(paths["straight"], "fresh", None), (paths["killed"], "fresh", case["kill_after"])])
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert killed.returncode == -9, killed.stderr[-3000:]
    run_b = tmp / "killed" / "run"
    assert not (run_b / "final").exists() and not (run_b / "summary.json").exists()
    assert max(r["step"] for r in train_rows(run_b)) == case["kill_after"]  # it got as far as the kill point
    resumed = run_child(paths["killed"], "resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return request.param, tmp / "straight" / "run", run_b


def test_resumed_weights_are_bit_identical(straight_and_resumed):
    _, a, b = straight_and_resumed
    assert_same_tensors(load_file(str(a / "final" / "model.safetensors")), load_file(str(b / "final" / "model.safetensors")),
                        "final")
    stages = json.loads((a / "summary.json").read_text())["stages"]
    assert [s["name"] for s in stages] == [s["name"] for s in json.loads((b / "summary.json").read_text())["stages"]]
    for s in stages:
        end = f"stages/{s['name']}/end.safetensors"
        assert_same_tensors(load_file(str(a / end)), load_file(str(b / end)), end)


def test_resumed_training_rows_match_and_are_not_repeated(straight_and_resumed):
    _, a, b = straight_and_resumed
    ra, rb = train_rows(a), train_rows(b)
    assert [r["step"] for r in rb] == list(range(1, len(ra) + 1))  # the lost step is replayed once, not twice
    assert [(r["loss"], r["reg/penalty"]) for r in ra] == [(r["loss"], r["reg/penalty"]) for r in rb]
    assert any(r["reg/penalty"] > 0 for r in rb)  # the regularizer was active in the resumed part
    assert ra == rb


def test_resumed_regularizer_state_and_importance_match(straight_and_resumed):
    method, a, b = straight_and_resumed
    last_a = sorted((a / "checkpoints").iterdir())[-1]
    last_b = sorted((b / "checkpoints").iterdir())[-1]
    assert last_a.name == last_b.name
    sa = torch.load(last_a / "regularizer.pt", weights_only=True)
    sb = torch.load(last_b / "regularizer.pt", weights_only=True)
    assert_same_state(sa, sb, "regularizer")
    names = [s["name"] for s in json.loads((a / "summary.json").read_text())["stages"]]
    if method == "hbat":
        for n in names:
            ia = json.loads((a / "stages" / n / "importance.json").read_text())
            ib = json.loads((b / "stages" / n / "importance.json").read_text())
            assert ia == ib, n
            assert [s["name"] for s in ib["stages"]] == names[: names.index(n) + 1]
    else:  # the anchor survived the resume: the initial model, or the model at the preference start
        cfg = CASES[method]["over"]["hbat.l2"]
        start = load_file(str(b / "stages" / "start.safetensors" if cfg.get("anchor") == "initial"
                              else b / "stages" / "01-sft" / "end.safetensors"))
        anchor = {}
        for g in sb["anchor"]["groups"]:
            sizes = [int(torch.Size(s).numel()) for s in g["shapes"]]
            anchor.update({n: t.view(s) for n, t, s in zip(g["names"], g["flat"].split(sizes), g["shapes"])})
        assert_same_tensors(anchor, start, "anchor")
