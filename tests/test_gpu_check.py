"""benchmarks/gpu_check.sh --dry-run: every step of the GPU check (throughput vs TRL and the ceiling, generation,
FSDP2 on one device, a short hbat run) runs with tiny shapes on CPU and lands in one JSON file and one markdown table.
TRL rows need trl (the bench extra): without it they are listed as skipped, and every tandem step must still pass."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["throughput-smollm2", "generation", "fsdp2", "hbat", "throughput-1b"]


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_step(tmp_path):
    if not (ROOT.parent / "shared" / "data" / "hh-rlhf").exists():
        pytest.skip("../shared/data not present")
    out = tmp_path / "gc"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads((out / "gpu_check.json").read_text())
    assert res["dry_run"] is True and list(res["steps"]) == STEPS
    assert all(s["status"] == "ok" for s in res["steps"].values())
    has_trl = importlib.util.find_spec("trl") is not None
    for name in ("throughput-smollm2", "throughput-1b"):
        rows = res["steps"][name]["results"]
        assert "tandem-dpo" in rows and all(r["tokens_per_s"] > 0 for r in rows.values())
        assert ("trl-dpo" in rows) == has_trl
        assert bool(res["steps"][name]["skipped"]) != has_trl  # trl absent: its rows are listed as skipped
    assert {"tandem-sft", "ceiling-dpo"} <= set(res["steps"]["throughput-smollm2"]["results"])
    gen = res["steps"]["generation"]["results"]["rows"]
    assert all(r["same_replies"] == 8 for r in gen if r["config"] == "tandem")  # greedy: the same replies
    fsdp = res["steps"]["fsdp2"]["results"]
    assert [r["reg"] for r in fsdp] == ["none", "ewc"] and all(r["sharded"] and r["procs"] == 1 for r in fsdp)
    assert len(res["steps"]["hbat"]["stages"]) == 4  # SFT-1, DPO-1, SFT-2, DPO-2
    table = (out / "gpu_check.md").read_text()
    assert all(f"| {name} | ok |" in table for name in STEPS)
