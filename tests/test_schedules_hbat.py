"""HBAT and its baselines through the engine: stage order, DPO reference at the stage start, importance.json
recomputable from the saved stage weights, best-stage selection, and every method end to end."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from test_engine_train import recipe
from test_methods_behaviour import check_method
from helpers_recipe import unpaired_copy
from transformers import AutoModelForCausalLM, AutoTokenizer

from tandem.data import collate, split_parts
from tandem.pipelines.train import load_role_features, train
from tandem.objectives import build
from tandem.regularizers.ewc import recompute_importance
from tandem.schedules import METHODS, build_stages


def test_stage_orders():
    names = lambda m, n: [s.name for s in build_stages(m, n)]  # noqa: E731
    assert names("hbat", 3) == ["01-sft-1", "02-pref-1", "03-sft-2", "04-pref-2", "05-sft-3", "06-pref-3"]
    assert names("sequential", 3) == ["01-sft", "02-pref"]
    assert [s.part for s in build_stages("hbat", 2)] == [0, 0, 1, 1]
    assert [s.role for s in build_stages("sequential-ewc", 4)] == ["sft", "preference"]
    assert [s.role for s in build_stages("sft+dpo", 2)] == ["sft"]


@pytest.fixture(scope="module")
def hbat_run(tmp_path_factory, tiny_model_dir, synthetic_files):
    tmp = tmp_path_factory.mktemp("hbat")
    r = recipe(tmp, tiny_model_dir, synthetic_files, method="hbat", **{
        "schedule.parts": 2, "schedule.max_steps_per_stage": 3, "checkpoint.stage_weights": True,
        "hbat.ewc": {"lam": 1.0, "f_max": 50.0, "normalise": "zscore", "temperature": 1.0},
        "hbat.select_metric": "preference/rewards/accuracy", "hbat.final": "best"})
    return r, train(r)


def test_hbat_alternates_and_records_every_stage(hbat_run):
    r, summary = hbat_run
    assert [s["name"] for s in summary["stages"]] == ["01-sft-1", "02-pref-1", "03-sft-2", "04-pref-2"]
    run = r.output_dir
    for s in summary["stages"]:
        d = f"{run}/stages/{s['name']}"
        assert json.load(open(f"{d}/stage.json"))["val"], "each stage is validated"
        assert load_file(f"{d}/end.safetensors")
    # the run keeps the stage with the best validation reward accuracy
    best = max(summary["stages"], key=lambda s: s["val"]["preference/rewards/accuracy"])
    assert summary["selected_stage"] == best["name"]


def test_importance_json_is_recomputable_from_stage_weights(hbat_run):
    r, summary = hbat_run
    run = r.output_dir
    start = load_file(f"{run}/stages/start.safetensors")
    chain, before = [], start
    for s in summary["stages"][:-1]:  # importance.json of stage k covers stages 1..k
        end = load_file(f"{run}/stages/{s['name']}/end.safetensors")
        chain.append(("ifa" if s["role"] == "sft" else "hpa", before, end))
        before = end
    last = summary["stages"][-1]
    chain.append(("hpa", before, load_file(f"{run}/stages/{last['name']}/end.safetensors")))
    rep = recompute_importance(chain, f_max=50.0, normalise="zscore", temperature=1.0)
    saved = json.load(open(f"{run}/stages/{last['name']}/importance.json"))
    assert set(rep["tensors"]) == set(saved["tensors"])
    for name, t in saved["tensors"].items():
        for k in ("ac_ifa", "ac_hpa", "f_ifa", "f_hpa"):
            assert rep["tensors"][name][k] == pytest.approx(t[k], rel=1e-5, abs=1e-12)
    f = [t["f_ifa"] for t in saved["tensors"].values()]
    assert sum(f) == pytest.approx(50.0, rel=1e-4) and max(f) > min(f)  # F = F_max * softmax: not uniform


def test_dpo_reference_is_the_model_at_the_stage_start(hbat_run, tiny_model_dir):
    r, _ = hbat_run
    run = r.output_dir
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    train_f, _, _ = load_role_features(r, "preference", tok)
    part2 = split_parts(train_f, 2, seed=r.seed)[1]
    stored = torch.load(f"{run}/stages/04-pref-2/prepared.pt", weights_only=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    dpo = build("dpo", beta=0.1)
    batch_fn = lambda fs: collate(fs, mode="pack", pad_id=tok.pad_token_id, max_tokens_per_row=1024)  # noqa: E731
    initial = dpo.prepare(model, part2, batch_fn)
    model.load_state_dict(load_file(f"{run}/stages/03-sft-2/end.safetensors"), strict=False)
    at_start = dpo.prepare(model, part2, batch_fn)
    ref = stored["ref_chosen_logp"].tolist()
    assert ref == pytest.approx([f["ref_chosen_logp"] for f in at_start], abs=1e-4)
    assert ref != pytest.approx([f["ref_chosen_logp"] for f in initial], abs=1e-3)


OFFLINE = [m for m in METHODS if "ppo" not in m and "grpo" not in m and m != "reward"]


@pytest.mark.parametrize("method", OFFLINE)
def test_every_method_runs_end_to_end(method, tmp_path, tiny_model_dir, synthetic_files):
    pretrain = {"data.pretrain": {"source": str(synthetic_files["sft"]), "format": "sft"}} \
        if METHODS[method].aux_role == "pretrain" else {}  # rlhf+pt: the SFT file stands in for a corpus
    if METHODS[method].preference_objective == "kto":  # unpaired rows
        pretrain = {"data.preference": {"source": unpaired_copy(synthetic_files["preference"], tmp_path)}}
    r = recipe(tmp_path, tiny_model_dir, synthetic_files, method=method, **{
        "schedule.parts": 2, "schedule.max_steps_per_stage": 1, "checkpoint.every": 0,
        "hbat.fisher": {"samples": 4}, **pretrain})
    summary = train(r)
    assert summary["global_steps"] == len(build_stages(method, 2))
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()
    # what the method does, read from the run directory (stage order, regularizer, auxiliary loss, frozen tensors)
    check_method(method, tmp_path / "run", summary, steps=1)
