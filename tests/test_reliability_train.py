"""`tandem train`'s promises about the user's files (issue 13): resume refuses a changed recipe, a resume that finds no
checkpoint restarts the metrics, --overwrite never replaces a directory tandem did not create, one writer per run
directory, the recipe is checked before anything is written, kill -9 and --resume give the same weights for a
regularized HBAT run and a PPO stage."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers_ppo import ppo_recipe
from helpers_recipe import base_raw, with_overrides

from tandem.config.recipe import dump_recipe
from tandem.io.rundir import RunDirError
from tandem.pipelines.train import train


def recipe(tmp_path, model_dir, files, method="sft", **over):
    return with_overrides(base_raw(tmp_path, model_dir, files, method), over)


def rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_refuses_changed_recipe(tmp_path, tiny_model_dir, synthetic_files):
    r = recipe(tmp_path, tiny_model_dir, synthetic_files, **{"schedule.max_steps_per_stage": 2})
    train(r)
    changed = with_overrides(r.model_dump(mode="json"), {"optimizer.lr": 0.5, "batching.batch_size": 2})
    with pytest.raises(RunDirError) as e:
        train(changed, resume=True)
    assert "optimizer.lr" in str(e.value) and "batching.batch_size" in str(e.value)
    with pytest.raises(RunDirError, match="not a field that is safe"):
        train(changed, resume=True, allow_changes=["optimizer.lr"])
    longer = with_overrides(r.model_dump(mode="json"), {"schedule.max_steps_per_stage": 3})
    with pytest.raises(RunDirError, match="--allow-change"):
        train(longer, resume=True)
    train(longer, resume=True, allow_changes=["schedule.max_steps_per_stage"])
    logged = [json.loads(x) for x in (Path(r.output_dir) / "resume-changes.jsonl").read_text().splitlines()]
    assert logged[-1]["changes"] == {"schedule.max_steps_per_stage": {"old": 2, "new": 3}}


def test_resume_without_checkpoint_restarts_metrics(tmp_path, tiny_model_dir, synthetic_files):
    r = recipe(tmp_path, tiny_model_dir, synthetic_files, **{"schedule.max_steps_per_stage": 3, "data.val_size": 0})
    train(r)
    run = Path(r.output_dir)
    import shutil

    shutil.rmtree(run / "checkpoints")  # as if killed before the first checkpoint
    train(r, resume=True)
    assert [x["step"] for x in rows(run) if x["split"] == "train"] == [1, 2, 3]


def test_overwrite_refuses_foreign_dir(tmp_path, tiny_model_dir, synthetic_files):
    data_dir = synthetic_files["sft"].parent
    before = sorted(p.name for p in data_dir.iterdir())
    r = recipe(tmp_path, tiny_model_dir, synthetic_files, **{"output_dir": str(data_dir)})
    with pytest.raises(RunDirError, match=str(data_dir)):
        train(r, overwrite=True)
    assert sorted(p.name for p in data_dir.iterdir()) == before


def _hold(run_dir: str, ready, stop) -> None:
    from tandem.io.rundir import RunLock

    with RunLock(run_dir):
        ready.set()
        stop.wait(30)


def test_second_writer_refused(tmp_path, tiny_model_dir, synthetic_files):
    r = recipe(tmp_path, tiny_model_dir, synthetic_files, **{"schedule.max_steps_per_stage": 1})
    train(r)
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(r.output_dir, ready, stop))
    p.start()
    try:
        assert ready.wait(60)
        with pytest.raises(RunDirError, match=str(p.pid)):
            train(r, overwrite=True)
        assert (Path(r.output_dir) / "final").exists()  # the live run's files are untouched
    finally:
        stop.set()
        p.join(30)


@pytest.mark.parametrize("over, match", [
    ({"schedule.method": "hbat-typo"}, "unknown method"),
    ({"objectives.sft": {"name": "sft", "bogus": 1}}, "bogus"),
    ({"data.sft": {"source": "no/such/file.jsonl"}}, "data file not found"),
    ({"regularizer": {"name": "ewc", "lamda": 1.0}}, "lamda"),
])
def test_validation_before_run_dir(tmp_path, tiny_model_dir, synthetic_files, over, match):
    out = Path(recipe(tmp_path, tiny_model_dir, synthetic_files).output_dir)
    with pytest.raises(ValueError, match=match):  # when the recipe loads (unknown method) or before the run dir
        train(recipe(tmp_path, tiny_model_dir, synthetic_files, **over))
    assert not out.exists()


SCRIPT = """
import sys
from tandem.config.recipe import load_recipe
from tandem.pipelines.train import train
train(load_recipe(sys.argv[1]), resume=sys.argv[2] == "resume")
"""


def _start(path: Path, mode: str, kill_after: int | None = None) -> subprocess.Popen:
    env = {**os.environ, **({"TANDEM_FAULT_KILL_AFTER_STEP": str(kill_after)} if kill_after else {})}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])  # reward_fn module
    env["OMP_NUM_THREADS"] = "1"  # one thread per child: two children run side by side on shared cores
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(path), mode], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait(p: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = p.communicate(timeout=300)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def _run(path: Path, mode: str, kill_after: int | None = None) -> subprocess.CompletedProcess:
    return _wait(_start(path, mode, kill_after))


def _kill_resume_identical(tmp_path, make, kill_after: int, files: list[str]) -> None:
    paths = {}
    for name in ("straight", "killed"):
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(dump_recipe(make(tmp_path / name)))
    straight, killed = [_wait(p) for p in (_start(paths["straight"], "fresh"),  # side by side
                                           _start(paths["killed"], "fresh", kill_after=kill_after))]
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert killed.returncode == -9, killed.stderr[-2000:]
    res = _run(paths["killed"], "resume")
    assert res.returncode == 0, res.stderr[-3000:]
    for f in files:
        a, b = tmp_path / "straight" / "run" / f, tmp_path / "killed" / "run" / f
        if f.endswith(".json"):
            assert json.loads(a.read_text()) == json.loads(b.read_text()), f
        else:
            ta, tb = load_file(str(a)), load_file(str(b))
            assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), f


@pytest.mark.parametrize("method", ["hbat", "hbat-freeze"])
def test_kill_resume_regularized_hbat(tmp_path, tiny_model_dir, synthetic_files, method):
    def make(d):  # killed in the middle of the first preference stage (the freeze of hbat-freeze is active there)
        return recipe(d, tiny_model_dir, synthetic_files, method=method,
                      **{"schedule.parts": 2, "schedule.max_steps_per_stage": 3, "checkpoint.every": 2})

    _kill_resume_identical(tmp_path, make, kill_after=5,
                           files=["final/model.safetensors", "stages/04-pref-2/importance.json"])


def test_kill_resume_ppo_stage(tmp_path, tiny_model_dir, synthetic_files):
    def make(d):
        return ppo_recipe(d, tiny_model_dir, synthetic_files, ppo={"critic_warmup_steps": 1},
                          **{"schedule.max_steps_per_stage": 4, "checkpoint.every": 2})

    _kill_resume_identical(tmp_path, make, kill_after=3,
                           files=["final/model.safetensors", "stages/01-pref/critic.safetensors"])
