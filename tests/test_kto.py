"""KTO (tandem.objectives.kto) on TRL's unpaired prompt/completion/label rows: the formula and TRL's KL reference point
by hand on tiny tensors, the rows' reading, role checks and one-line errors, the KL pairs of the encoder, the collated
layout, and KTO training as a method (``kto``) and as the preference stage of an hbat schedule."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl
from helpers_entry import cli_app, train
from helpers_objectives import tiny_llama
from helpers_recipe import base_raw, with_overrides
from typer.testing import CliRunner

from tandem.data import synthetic
from tandem.data.collate import collate, feature_length
from tandem.data.encode import encode_all
from tandem.data.errors import DataError
from tandem.data.formats import load_examples
from tandem.data.types import UnpairedExample, user
from tandem.objectives.kto import KTO, kl_estimate, kto_losses
from tandem.objectives.logprobs import sequence_logps
from tandem.objectives.registry import build


def sig(x):
    return 1 / (1 + math.exp(-x))


# ------------------------------------------------------------------------------------------------ formula, by hand


def test_kto_losses_by_hand():
    r = torch.tensor([1.0, -2.0, 0.5])
    desirable = torch.tensor([True, False, False])
    kl, beta = torch.tensor(0.25), 0.5
    got = kto_losses(r, desirable, kl, beta, desirable_weight=2.0, undesirable_weight=0.5)
    want = [2.0 * (1 - sig(0.5 * (1.0 - 0.25))), 0.5 * (1 - sig(0.5 * (0.25 + 2.0))), 0.5 * (1 - sig(0.5 * (0.25 - 0.5)))]
    assert got.tolist() == pytest.approx(want)


def test_kl_estimate_is_the_detached_clamped_batch_mean():
    kl_logp = torch.tensor([-3.0, -5.0, -4.0], requires_grad=True)
    ref = torch.tensor([-3.5, -4.0, -4.0])
    z = kl_estimate(kl_logp, ref)  # mean(0.5, -1, 0) = -1/6 -> clamped at 0
    assert float(z) == 0.0 and not z.requires_grad
    z = kl_estimate(kl_logp, torch.tensor([-4.0, -6.0, -4.0]))  # mean(1, 1, 0) = 2/3
    assert float(z) == pytest.approx(2 / 3) and not z.requires_grad


def test_settings_are_checked():
    with pytest.raises(ValueError, match="kto desirable_weight must be > 0"):
        build("kto", desirable_weight=0)
    with pytest.raises(ValueError, match="kto beta must be > 0"):
        build("kto", beta=-1.0)
    with pytest.raises(TypeError, match="loss_type"):
        build("kto", loss_type="kto")  # TRL's loss_type "kto" is the only one: no such argument
    k = build("kto", beta=0.2, desirable_weight=1.33, undesirable_weight=1.0)
    assert k.data_kind == "unpaired" and k.unit == "examples"


# ------------------------------------------------------------------------------------------------ data


ROWS = [{"prompt": "Add 2 and 3.", "completion": "5", "label": True},
        {"prompt": "Add 2 and 3.", "completion": "6", "label": False},
        {"prompt": "Say hi.", "completion": "hi", "label": True},
        {"prompt": "Say hi.", "completion": "bye", "label": False}]


def test_unpaired_rows_are_read_for_the_unpaired_role_also_from_csv(tmp_path):
    ex, report = load_examples(str(write_jsonl(tmp_path / "kto.jsonl", ROWS)), role="unpaired")
    assert report.format == "unpaired_preference"
    assert [(e.prompt, e.completion, e.label) for e in ex] == [(user(r["prompt"]), r["completion"], r["label"]) for r in ROWS]
    p = tmp_path / "kto.csv"
    p.write_text("prompt,completion,label\nSay hi.,hi,True\nSay hi.,bye,false\n")
    ex, _ = load_examples(str(p), role="unpaired")
    assert [e.label for e in ex] == [True, False]
    ex, _ = load_examples(str(p), role="unpaired", format="unpaired_preference")  # declared
    assert len(ex) == 2


def test_wrong_rows_for_the_unpaired_role_are_one_line_errors(tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError) as e:
        load_examples(str(pairs), role="unpaired")
    msg = str(e.value)
    assert "\n" not in msg and "row 1" in msg and "'preference'" in msg and "label" in msg and "dpo" in msg
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "q", "completion": "a"}])
    with pytest.raises(DataError, match=r"sft\.jsonl: row 1: the unpaired data needs .*'prompt_response'.*sft data"):
        load_examples(str(sft), role="unpaired")
    bad = write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], {"prompt": "q", "completion": "a", "label": "maybe"}])
    with pytest.raises(DataError, match=r"bad\.jsonl: row 2: field 'label' must be true or false"):
        load_examples(str(bad), role="unpaired")
    missing = write_jsonl(tmp_path / "missing.jsonl", [ROWS[0], {"prompt": "q", "completion": "a"}])
    with pytest.raises(DataError, match=r"missing\.jsonl: row 2: format 'unpaired_preference' needs field 'label'"):
        load_examples(str(missing), role="unpaired")


def test_unpaired_rows_for_other_roles_point_to_kto(tmp_path):
    p = write_jsonl(tmp_path / "kto.jsonl", ROWS)
    for role in ("sft", "preference"):
        with pytest.raises(DataError, match=r"row 1: unpaired preference row .*KTO-style.*kto objective"):
            load_examples(str(p), role=role)


def test_empty_completions_are_left_out_and_counted(tmp_path):
    p = write_jsonl(tmp_path / "kto.jsonl", [*ROWS, {"prompt": "q", "completion": " ", "label": True}])
    ex, report = load_examples(str(p), role="unpaired")
    assert len(ex) == 4 and report.skipped == {"empty_completion": 1}


def test_each_prompt_is_paired_with_the_previous_completion_for_the_kl_term(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    exs = [UnpairedExample(user(f"prompt {i}"), f"answer {i}", i % 2 == 0) for i in range(3)]
    feats, stats = encode_all(tok, exs, max_length=64)
    assert stats.kept == 3
    ref = {i: encode_all(tok, [UnpairedExample(user(f"prompt {i}"), f"answer {j}", True) for j in range(3)], 64)[0]
           for i in range(3)}
    for i, f in enumerate(feats):
        j = (i - 1) % 3  # TRL's rotation: (x_1, y_n), (x_2, y_1), ...
        assert f["input_ids"] == ref[i][i]["input_ids"] and f["label"] == float(i % 2 == 0)
        assert f["kl_input_ids"] == ref[i][j]["input_ids"] and f["kl_labels"] == ref[i][j]["labels"]
    assert feature_length(feats[0]) == len(feats[0]["input_ids"]) + len(feats[0]["kl_input_ids"])


def test_kl_pairs_skip_completions_of_the_same_prompt():
    from tandem.data.encode import kl_partners

    # one prompt's desirable and undesirable completions in turn (a pair file unpaired row by row)
    prompts = [user(p) for p in ("a", "a", "b", "b", "c", "c")]
    assert kl_partners(prompts) == [5, 5, 1, 1, 3, 3]
    assert all(prompts[j] != prompts[i] for i, j in enumerate(kl_partners(prompts)))
    assert kl_partners([user("a"), user("b"), user("c")]) == [2, 0, 1]  # distinct prompts: TRL's rotation by one
    assert kl_partners([user("a"), user("b"), user("a")]) == [1, 0, 1]
    assert kl_partners([user("a")] * 3) == [2, 0, 1]  # nothing to mismatch: still the rotation


def feats_of(lengths: list[int], label: list[bool]):
    return [{"input_ids": list(range(1, n + 1)), "labels": [-100] + list(range(2, n + 1)),
             "kl_input_ids": list(range(1, n + 3)), "kl_labels": [-100] + list(range(2, n + 3)), "label": float(lab)}
            for n, lab in zip(lengths, label)]


@pytest.mark.parametrize("mode", ["pack", "pad"])
def test_collate_keeps_completions_and_kl_sequences_in_separate_rows(mode):
    b = collate(feats_of([3, 4, 2], [True, False, True]), mode=mode, max_tokens_per_row=16)
    assert b["label"].tolist() == [1.0, 0.0, 1.0]
    for row in b["seq_ids"].tolist():
        ids = {s for s in row if s >= 0}
        assert ids <= {0, 1, 2} or ids <= {3, 4, 5}
    assert {s for row in b["seq_ids"].tolist() for s in row if s >= 0} == set(range(6))


# ------------------------------------------------------------------------------------------------ objective


def test_the_objective_matches_the_formula_and_the_kl_half_has_no_gradient():
    torch.manual_seed(0)
    model = tiny_llama()
    feats = feats_of([4, 5, 3, 4], [True, False, True, False])
    kto = KTO(beta=0.5, desirable_weight=1.5, undesirable_weight=0.7)
    batch_fn = lambda fs: collate(fs, mode="pack", max_tokens_per_row=12)
    feats = kto.prepare(model, feats, batch_fn)
    assert all("ref_logp" in f and "ref_kl_logp" in f for f in feats)
    with torch.no_grad():  # move the policy away from the reference
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = batch_fn(feats)
    loss, m = kto(model, batch)
    with torch.no_grad():
        s, _ = sequence_logps(model, batch, num_seqs=8)
    r = s[:4] - torch.tensor([f["ref_logp"] for f in feats])
    z = max(0.0, float((s[4:] - torch.tensor([f["ref_kl_logp"] for f in feats])).mean()))
    want = kto_losses(r, torch.tensor([True, False, True, False]), torch.tensor(z), 0.5, 1.5, 0.7).mean()
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5)
    assert m["kl"] == pytest.approx(z, abs=1e-6)
    loss.backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.parameters())


def test_kl_and_log_ratios_are_zero_at_the_reference():
    torch.manual_seed(0)
    model = tiny_llama().eval()
    feats = feats_of([4, 5], [True, False])
    kto = KTO(beta=0.1)
    batch_fn = lambda fs: collate(fs, mode="pad")
    feats = kto.prepare(model, feats, batch_fn)
    loss, m = kto(model, batch_fn(feats))
    assert m["kl"] == pytest.approx(0.0, abs=1e-5)
    assert float(loss.detach()) == pytest.approx(0.5, abs=1e-5)  # 1 - sigmoid(0) for both


# ------------------------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def kto_file(tmp_path_factory) -> Path:
    rows = []
    for p in synthetic.preference_pairs(24, 3):
        rows += [{"prompt": p.prompt, "completion": p.chosen, "label": True},
                 {"prompt": p.prompt, "completion": p.rejected, "label": False}]
    return write_jsonl(tmp_path_factory.mktemp("kto") / "kto.jsonl", rows)


def metric_rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_method_kto_trains_on_unpaired_rows(tmp_path, tiny_model_dir, synthetic_files, kto_file, one_thread):
    raw = base_raw(tmp_path, tiny_model_dir, synthetic_files, "kto")
    r = with_overrides(raw, {"data.preference": {"source": str(kto_file)}, "schedule.max_steps_per_stage": 3,
                             "objectives.kto": {"name": "kto", "beta": 0.1, "undesirable_weight": 1.2}})
    summary = train(r)
    rows = [x for x in metric_rows(Path(r.output_dir)) if x["split"] == "train"]
    assert len(rows) == 3 and all(x["role"] == "preference" for x in rows)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the reference is the stage-start policy
    assert all(math.isfinite(x["loss"]) and "rewards/signed" in x for x in rows)
    assert summary["stages"][0]["val"]["preference/kl"] >= 0.0


def test_kto_is_the_preference_stage_of_an_hbat_schedule(tmp_path, tiny_model_dir, synthetic_files, kto_file, one_thread):
    raw = base_raw(tmp_path, tiny_model_dir, synthetic_files, "hbat")
    r = with_overrides(raw, {"data.preference": {"source": str(kto_file)}, "schedule.parts": 2,
                             "schedule.max_steps_per_stage": 2, "data.val_size": 4,
                             "objectives.preference": {"name": "kto", "beta": 0.1}})
    summary = train(r)
    assert [s["name"] for s in summary["stages"]] == ["01-sft-1", "02-pref-1", "03-sft-2", "04-pref-2"]
    pref = [x for x in metric_rows(Path(r.output_dir)) if x["split"] == "train" and x["role"] == "preference"]
    assert [x["stage"] for x in pref] == ["02-pref-1"] * 2 + ["04-pref-2"] * 2
    assert pref[0]["kl"] == pytest.approx(0.0, abs=1e-6) and pref[2]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert pref[-1]["reg/penalty"] > 0  # the modified EWC pulls the second KTO stage towards the SFT side
    assert all("preference/kl" in s["val"] for s in summary["stages"])


def test_paired_data_for_kto_is_one_line_exit_2(tmp_path, tiny_model_dir, synthetic_files, monkeypatch):
    import yaml

    raw = base_raw(tmp_path, tiny_model_dir, synthetic_files, "kto")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli_app, ["train", str(tmp_path / "r.yaml")])
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1 and "Traceback" not in res.output, res.output
    assert "row 1" in errors[0] and "unpaired" in errors[0] and "label" in errors[0]


def test_the_entanglement_probe_is_refused_with_kto(tmp_path, tiny_model_dir, synthetic_files):
    from tandem.config.recipe import RecipeError

    for method, over in (("kto", {}), ("hbat", {"objectives.preference": {"name": "kto"}})):
        raw = base_raw(tmp_path, tiny_model_dir, synthetic_files, method)
        with pytest.raises(RecipeError, match="probe.every: the entanglement probe .* kto objective"):
            with_overrides(raw, {**over, "probe.every": 2})
    with_overrides(base_raw(tmp_path, tiny_model_dir, synthetic_files, "hbat"), {"probe.every": 2})  # dpo: fine


def test_data_inspect_reads_unpaired_rows(tmp_path, tiny_model_dir):
    p = str(write_jsonl(tmp_path / "kto.jsonl", ROWS))
    res = CliRunner().invoke(cli_app, ["data", "inspect", p, "--role", "unpaired", "--tokenizer", str(tiny_model_dir)])
    assert res.exit_code == 0, res.output
    assert "unpaired_preference (unpaired)" in res.output and "2 of 4 desirable" in res.output
    res = CliRunner().invoke(cli_app, ["data", "inspect", p, "--format", "unpaired_preference"])
    assert res.exit_code == 0 and "completion length" in res.output, res.output
    res = CliRunner().invoke(cli_app, ["data", "inspect", p, "--role", "preference"])
    assert res.exit_code == 2 and "kto objective" in res.output, res.output


@pytest.mark.slow  # three child processes (about a minute on 2 shared cores)
def test_kill_and_resume_in_a_kto_stage_of_hbat_is_bit_identical(tmp_path, tiny_model_dir, synthetic_files, kto_file):
    """SIGKILL after global step 5 (inside the first KTO stage, past its checkpoint at step 4), then --resume: the same
    weights at every stage end and the same training rows as an uninterrupted run (the stored reference log-probs of
    the completions and of the KL pairs are reused)."""
    from safetensors.torch import load_file
    from test_resume_regularized import (
        assert_same_tensors,
        run_child,
        run_children,
        train_rows,
    )

    from tandem.config.recipe import dump_recipe

    paths = {}
    for name in ("straight", "killed"):
        r = with_overrides(base_raw(tmp_path / name, tiny_model_dir, synthetic_files, "hbat"), {
            "data.preference": {"source": str(kto_file)}, "objectives.preference": {"name": "kto", "beta": 0.1},
            "schedule.parts": 2, "schedule.max_steps_per_stage": 3, "checkpoint.every": 2, "checkpoint.keep": 2,
            "checkpoint.stage_weights": True, "logging.tensorboard": False, "data.val_size": 4})
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(dump_recipe(r))
    straight, killed = run_children([(paths["straight"], "fresh", None), (paths["killed"], "fresh", 5)])
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = run_child(paths["killed"], "resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = tmp_path / "straight" / "run", tmp_path / "killed" / "run"
    stages = [s["name"] for s in json.loads((a / "summary.json").read_text())["stages"]]
    assert stages == ["01-sft-1", "02-pref-1", "03-sft-2", "04-pref-2"]
    for s in stages:
        end = f"stages/{s}/end.safetensors"
        assert_same_tensors(load_file(str(a / end)), load_file(str(b / end)), end)
    ra, rb = train_rows(a), train_rows(b)
    assert [r["step"] for r in rb] == list(range(1, 13)) and ra == rb
    assert any(r.get("kl", 0.0) > 0 or r.get("rewards/signed", 0.0) != 0 for r in rb if r["role"] == "preference")


def test_a_trl_kto_config_trains_through_the_cli(tmp_path, tiny_model_dir, kto_file, monkeypatch):
    """KTOConfig's flat names (beta, desirable_weight, undesirable_weight) land in objectives.preference of method kto."""
    import yaml

    raw = {"output_dir": str(tmp_path / "run"), "model_name_or_path": str(tiny_model_dir), "method": "kto",
           "data": {"preference": {"source": str(kto_file)}}, "learning_rate": 1e-3, "max_steps": 2,
           "per_device_train_batch_size": 4, "max_length": 64, "beta": 0.2, "desirable_weight": 1.33,
           "undesirable_weight": 0.9, "report_to": "none", "precision": "fp32", "logging": {"progress": False}}
    (tmp_path / "kto.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli_app, ["train", str(tmp_path / "kto.yaml")], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    assert "desirable_weight is tandem's objectives.preference.desirable_weight" in res.output
    resolved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert resolved["objectives"]["preference"] == {"name": "kto", "beta": 0.2, "desirable_weight": 1.33,
                                                    "undesirable_weight": 0.9}


@pytest.mark.parametrize("kw", [{"mode": "pack", "max_tokens_per_row": None}, {"mode": "pad"}])
def test_a_micro_batch_of_one_and_unbounded_rows(kw):
    torch.manual_seed(0)
    model = tiny_llama()
    kto = KTO(beta=0.3)
    feats = kto.prepare(model, feats_of([4, 6, 5], [True, False, True]), lambda fs: collate(fs, **kw))
    one = collate(feats[:1], **kw)
    assert one["seq_ids"].shape[0] == 2  # the completion's row and the KL row
    loss, m = kto(model, one)
    assert float(loss.detach()) == pytest.approx(0.5, abs=1e-5) and m["kl"] == pytest.approx(0.0, abs=1e-5)
    loss, _ = kto(model, collate(feats, **kw))
    assert torch.isfinite(loss.detach())
