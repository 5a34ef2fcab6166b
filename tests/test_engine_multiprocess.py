"""`accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2` (2 CPU processes, gloo) gives the
same loss curve as one process (same global batch)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tandem.config.recipe import dump_recipe

from test_engine_train import recipe


CONFIG = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "ddp.yaml"


def _losses(run: Path) -> list[float]:
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"]


@pytest.mark.skipif(shutil.which("accelerate") is None and not Path(sys.executable).with_name("accelerate").exists(), reason="accelerate CLI missing")
@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_two_cpu_processes_match_one(tmp_path, tiny_model_dir, synthetic_files, method):
    paths = {}
    for name in ("one", "two"):
        r = recipe(tmp_path / name, tiny_model_dir, synthetic_files, method=method,
                   **{"schedule.max_steps_per_stage": 4, "checkpoint.every": 0, "data.val_size": 0, "batching.batch_size": 8,
                      "batching.grad_accum": 2})
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(dump_recipe(r))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "tandem.cli.main", "train", str(paths["one"]), "--no-progress"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    two = subprocess.run(
        [accelerate, "launch", "--config_file", str(CONFIG), "--num_processes", "2", "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", "tandem.cli.main", "train", str(paths["two"]), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _losses(tmp_path / "one" / "run"), _losses(tmp_path / "two" / "run")
    assert len(a) == len(b) == 4
    assert a == pytest.approx(b, rel=1e-4, abs=1e-5)
    assert a[0] != a[-1]  # it trained
    # two processes really ran (accelerate with --cpu would have started one)
    assert json.loads((tmp_path / "two" / "run" / "summary.json").read_text())["processes"] == 2


@pytest.mark.skipif(shutil.which("accelerate") is None and not Path(sys.executable).with_name("accelerate").exists(), reason="accelerate CLI missing")
def test_grpo_on_two_cpu_processes_matches_one(tmp_path, tiny_model_dir, synthetic_files):
    """A GRPO stage split over 2 processes (each prompt keeps its seeded completions, the batch std and dapo's token
    count are summed over processes) logs the rewards and losses of one process."""
    from helpers_grpo import grpo_recipe

    paths = {}
    for name in ("one", "two"):
        r = grpo_recipe(tmp_path / name, tiny_model_dir, synthetic_files,
                        grpo={"beta": 0.1, "scale_rewards": "batch", "num_generations": 3},
                        **{"batching.batch_size": 4, "schedule.max_steps_per_stage": 3})
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(dump_recipe(r))
    env = {**os.environ, "OMP_NUM_THREADS": "1",  # the reward function's module (helpers_grpo) is in tests/
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    one = subprocess.run([sys.executable, "-m", "tandem.cli.main", "train", str(paths["one"]), "--no-progress"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file", str(CONFIG), "--num_processes", "2",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tandem.cli.main", "train", str(paths["two"]),
         "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]

    def curve(run):
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["reward"], r["completion_length"], r["loss"], r["kl"]) for r in rows if r["split"] == "train"]

    a, b = curve(tmp_path / "one" / "run"), curve(tmp_path / "two" / "run")
    assert len(a) == len(b) == 3 and a[1][3] > 0  # the KL to the reference moved: it trained
    for x, y in zip(a, b):
        assert x == pytest.approx(y, rel=1e-4, abs=1e-6)
    assert json.loads((tmp_path / "two" / "run" / "summary.json").read_text())["processes"] == 2
