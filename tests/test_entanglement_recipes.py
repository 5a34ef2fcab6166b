"""recipes/entanglement (issue 14, part 5): five preference losses that share everything but the loss, run end to end
by ``tandem study`` on the tiny model with the training-time probe on, the held-out log-prob changes in the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tandem.pipelines.study import load_study, study

ROOT = Path(__file__).resolve().parents[1]
LOSSES = {"dpo": ("dpo", 0.0), "dpo-nll": ("dpo", 1.0), "dpop": ("dpop", None), "normalized": ("normalized", None),
          "simpo": ("simpo", None)}

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_recipes_share_everything_but_the_loss():
    loaded = load_study(ROOT / "recipes" / "entanglement")
    assert set(loaded) == set(LOSSES)
    for name, (_, r) in loaded.items():
        pref = r.objectives["preference"].model_dump()
        assert pref["name"] == LOSSES[name][0] and pref.get("nll_coef", 0.0) == (LOSSES[name][1] or 0.0)
        assert r.schedule.method == "dpo" and r.probe.every > 0
        assert r.data.preference.source.endswith("helpful-rejection-sampled/test.jsonl.gz")
        assert r.eval.pairs.endswith("helpful-online/test.jsonl.gz")  # held out: another file


def test_the_study_runs_every_loss_with_the_probe(tmp_path, tiny_model_dir, synthetic_files):
    over = [f"model.name_or_path={tiny_model_dir}", "model.lora.target_modules=[q_proj,v_proj]", "precision=fp32",
            f"data.preference={{source: {synthetic_files['preference']}, limit: 24}}", "data.max_length=64",
            "data.val_size=4", "schedule.max_steps_per_stage=2", "probe.every=1", "probe.pairs=2",
            "logging.tensorboard=false", "checkpoint.every=0", f"eval.pairs={synthetic_files['preference']}",
            "eval.pairs_limit=4", f"eval.reference_model={tiny_model_dir}", "eval.max_length=64"]
    rows = study(ROOT / "recipes" / "entanglement", [0], tmp_path / "out", over)
    assert [r["method"] for r in rows] == sorted(LOSSES, key=lambda n: f"{n}.yaml")  # file order
    for r in rows:
        assert r["steps"] == 2 and r["implicit_reward_accuracy/n"] == 4
        probes = [json.loads(ln) for ln in (Path(r["run"]) / "metrics.jsonl").read_text().splitlines()]
        probes = [m for m in probes if "probe/logp_w" in m]
        assert len(probes) >= 2 and all("probe/logp_l" in m and "probe/mean_cosine" in m for m in probes)
    # benchmarks/probe_table.py reads the same rows: first and last probe, and their change
    from helpers_bench import load_benchmark

    pt = load_benchmark("probe_table")
    runs = [Path(r["run"]) for r in rows]
    md = pt.table(runs).splitlines()
    assert len(md) == 2 + len(runs)
    first = pt.probes(runs[0])
    r0 = pt.row(runs[0])
    assert r0["logp_w"] == (first[0]["probe/logp_w"], first[-1]["probe/logp_w"]) and r0["probes"] == len(first)
    assert f"{first[-1]['probe/logp_w'] - first[0]['probe/logp_w']:+.2f}" in md[2]
