"""HBAT options seen in the run directory: ``hbat.reference: initial`` and ``hbat.select_metric`` with
``select_mode: min`` / ``max`` and ``final: best``.

- reference initial: every preference stage's DPO reference values (stages/*/prepared.pt) are those of the
  initial model on that stage's data part (recomputed here from the saved tiny model), so a later preference
  stage does not start at loss ln 2; with the default ``stage_start`` the second preference stage's reference is
  the model at its start (loss ln 2 at its first step) and differs from the initial model's.
- select_mode: the selected stage is the arg-min (arg-max) of the metric over the stages' validation, and
  final/ holds exactly that stage's end weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers_entry import load_role_features, train
from helpers_recipe import base_raw, with_overrides
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tandem.data import collate, split_parts
from tandem.objectives import build

PREF_STAGES = ["02-pref-1", "04-pref-2"]
OVER = {"schedule.parts": 2, "schedule.max_steps_per_stage": 2, "checkpoint.every": 0, "checkpoint.stage_weights": True,
        "logging.tensorboard": False, "data.val_size": 6}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


def rows(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]


def first_loss(run: Path, stage: str) -> float:
    return next(r["loss"] for r in rows(run) if r["stage"] == stage)


def refs(path: Path) -> dict[str, list[float]]:
    return {k: v.tolist() for k, v in torch.load(path, weights_only=True).items()}


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory, tiny_model_dir, synthetic_files):
    out = {}
    for mode in ("initial", "stage_start"):
        tmp = tmp_path_factory.mktemp(f"ref-{mode}")
        r = with_overrides(base_raw(tmp, tiny_model_dir, synthetic_files, "hbat"), {**OVER, "hbat.reference": mode})
        train(r)
        out[mode] = (r, Path(r.output_dir))
    return out


@pytest.fixture(scope="module")
def initial_refs(reference_runs, tiny_model_dir) -> list[dict[str, list[float]]]:
    """DPO reference values of the initial model on each preference data part, computed outside the engine."""
    r, _ = reference_runs["initial"]
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    train_f, _, _ = load_role_features(r, "preference", tok)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=torch.float32)
    dpo = build("dpo", beta=0.1)
    batch_fn = lambda fs: collate(fs, mode="pack", pad_id=tok.pad_token_id, max_tokens_per_row=1024)  # noqa: E731
    out = []
    for part in split_parts(train_f, 2, seed=r.seed):
        feats = dpo.prepare(model, part, batch_fn)
        out.append({k: [f[k] for f in feats] for k in ("ref_chosen_logp", "ref_rejected_logp")})
    return out


def test_reference_initial_uses_the_initial_model_in_every_preference_stage(reference_runs, initial_refs):
    _, run = reference_runs["initial"]
    for part, stage in enumerate(PREF_STAGES):
        stored = refs(run / "stages" / stage / "prepared.pt")
        assert stored.keys() == initial_refs[part].keys()
        for k, want in initial_refs[part].items():
            assert stored[k] == pytest.approx(want, abs=1e-4), (stage, k)
        # the run's own record of the initial reference (reused on --resume) holds the same values
        assert refs(run / f"ref-initial-preference-{part}.pt") == stored
    # the policy has moved since the initial model: no preference stage starts at ln 2
    for stage in PREF_STAGES:
        assert abs(first_loss(run, stage) - math.log(2)) > 1e-4, stage


def test_reference_stage_start_differs_from_the_initial_model(reference_runs, initial_refs):
    _, run = reference_runs["stage_start"]
    assert not list(run.glob("ref-initial-*"))
    stored = refs(run / "stages" / "04-pref-2" / "prepared.pt")
    for k, want in initial_refs[1].items():
        assert stored[k] != pytest.approx(want, abs=1e-3), k
    for stage in PREF_STAGES:  # reference = policy at the stage start
        assert first_loss(run, stage) == pytest.approx(math.log(2), abs=1e-5), stage
    # same data, seed and schedule: the SFT stage before any preference stage is the same in both runs
    a = load_file(str(run / "stages" / "01-sft-1" / "end.safetensors"))
    b = load_file(str(reference_runs["initial"][1] / "stages" / "01-sft-1" / "end.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


METRIC = "sft/loss"


@pytest.fixture(scope="module")
def selected_runs(tmp_path_factory, tiny_model_dir, synthetic_files):
    out = {}
    for mode in ("min", "max"):
        tmp = tmp_path_factory.mktemp(f"select-{mode}")
        r = with_overrides(base_raw(tmp, tiny_model_dir, synthetic_files, "hbat"), {
            **OVER, "hbat.select_metric": METRIC, "hbat.select_mode": mode, "hbat.final": "best"})
        out[mode] = (Path(r.output_dir), train(r))
    return out


@pytest.mark.parametrize("mode", ["min", "max"])
def test_selected_stage_is_the_best_by_the_mode_and_becomes_final(selected_runs, mode):
    run, summary = selected_runs[mode]
    on_disk = json.loads((run / "summary.json").read_text())
    vals = {s["name"]: s["val"][METRIC] for s in on_disk["stages"]}
    assert len(set(vals.values())) == len(vals)  # distinct: the choice is unambiguous
    best = (min if mode == "min" else max)(vals, key=vals.get)
    assert on_disk["selected_stage"] == summary["selected_stage"] == best
    assert on_disk["final_val"][METRIC] == vals[best]
    final = load_file(str(run / "final" / "model.safetensors"))
    chosen = load_file(str(run / "stages" / best / "end.safetensors"))
    assert chosen.keys() <= final.keys()
    assert all(torch.equal(final[k], chosen[k]) for k in chosen)
    for other in vals:
        if other != best:
            w = load_file(str(run / "stages" / other / "end.safetensors"))
            assert any(not torch.equal(final[k], w[k]) for k in w), other


def test_min_and_max_pick_different_stages_of_the_same_training(selected_runs):
    (run_min, s_min), (run_max, s_max) = selected_runs["min"], selected_runs["max"]
    assert s_min["selected_stage"] != s_max["selected_stage"]
    # the selection happens after training: both runs trained identically
    for stage in (s["name"] for s in s_min["stages"]):
        a = load_file(str(run_min / "stages" / stage / "end.safetensors"))
        b = load_file(str(run_max / "stages" / stage / "end.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), stage
    fa = load_file(str(run_min / "final" / "model.safetensors"))
    fb = load_file(str(run_max / "final" / "model.safetensors"))
    assert any(not torch.equal(fa[k], fb[k]) for k in fa)
