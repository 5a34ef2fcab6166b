"""Outputs that are right the first time: final/merged in the trained dtype, the model card with the final validation
metrics, only the recipe blocks the run used and base_model from the model's origin, hub.push at the end of training
(against the local fake Hub), per-stage weights only where needed, and TensorBoard's train/validation overlay."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
import yaml
from helpers_fakehub import TOKEN, fake_hub
from safetensors import safe_open

import tandem
from tandem.data import synthetic
from tandem.models.card import card_info, final_val, origin_of, used_blocks


def _front_matter(readme) -> dict:
    return yaml.safe_load(re.match(r"^---\n(.*?)\n---", readme.read_text(), re.S).group(1))


@pytest.fixture
def origin_model(tmp_path, tiny_model_dir):
    """The tiny model as a pulled model that names its origin in its card (as `tandem models pull` writes it)."""
    d = shutil.copytree(tiny_model_dir, tmp_path / "base")
    (d / "README.md").write_text("---\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\n---\n# base\n")
    return d


def test_bf16_lora_run_card_merged_dtype_and_push(tmp_path, origin_model, synthetic_files, monkeypatch, one_thread):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with fake_hub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        run = tandem.train({"method": "sft", "max_steps": 2, "batching": {"batch_size": 4}, "max_length": 64,
                            "precision": "bf16", "logging": {"progress": False}, "output_dir": str(tmp_path / "run"),
                            "model": {"name_or_path": str(origin_model), "lora": {"r": 4, "alpha": 8}},
                            "data": {"val_size": 4}, "push_to_hub": True, "hub_model_id": "me/tiny-sft"},
                           data={"sft": synthetic_files["sft"]})
        assert run.summary["pushed"] and "me/tiny-sft" in hub.repos
        pushed = hub.repos["me/tiny-sft"]["branches"]["main"]
        assert "model.safetensors" in pushed and b"bfloat16" in pushed["config.json"]  # final/merged went
    merged = run.dir / "final" / "merged"
    with safe_open(str(merged / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}  # the dtype it trained in
    for readme in (run.dir / "final" / "README.md", merged / "README.md"):
        meta, text = _front_matter(readme), readme.read_text()
        assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"  # the local base names its origin
        assert "## Final validation metrics" in text and "`sft/loss`" in text
        val = json.loads((run.dir / "summary.json").read_text())["final_val"]
        assert f"| `sft/loss` | {val['sft/loss']:.4g} |" in text
        recipe = yaml.safe_load(text.split("```yaml\n", 1)[1].split("```", 1)[0])
        assert set(recipe) >= {"model", "data", "optimizer", "schedule", "objectives", "hub"}
        assert not set(recipe) & {"tax", "eval", "hbat", "probe", "regularizer"}  # blocks an SFT run never read
        assert set(recipe["objectives"]) == {"sft"} and "preference" not in recipe["data"]


def test_card_pieces():
    summary = {"stages": [{"name": "01-sft", "role": "sft", "val": {"sft/loss": 2.0}},
                          {"name": "02-pref", "role": "preference", "val": {"sft/loss": 2.5}}],
               "selected_stage": "01-sft"}
    assert final_val(summary) == {"sft/loss": 2.0}  # before summary["final_val"] is set: the selected stage's
    assert final_val({**summary, "final_val": {"x": 1.0}}) == {"x": 1.0}
    assert card_info({}, {**summary, "selected_stage": None}).metrics == {"sft/loss": 2.5}
    recipe = {"model": {}, "schedule": {"method": "hbat"}, "hbat": {"ewc": {}}, "tax": {}, "eval": {},
              "probe": {"every": 0}, "hub": {"push": False}, "data": {"sft": {"source": "a"}, "preference": {"source": "b"},
              "pretrain": None, "val": {}}, "objectives": {"sft": {"name": "sft"}, "preference": {"name": "dpo"},
                                                            "reward": {"name": "reward"}}}
    used = used_blocks(recipe, summary)
    assert "hbat" in used and not set(used) & {"tax", "eval", "probe", "hub"}
    assert set(used["objectives"]) == {"sft", "preference"} and set(used["data"]) == {"sft", "preference"}
    assert "hbat" not in used_blocks({**recipe, "schedule": {"method": "dpo"}}, {"stages": [{"role": "preference"}]})
    assert origin_of("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert origin_of("/no/such/dir") is None


def test_single_stage_runs_skip_stage_weights_multi_stage_runs_keep_them(tmp_path, tiny_model_dir, synthetic_files,
                                                                          one_thread):
    common = {"max_steps": 2, "batching": {"batch_size": 4}, "max_length": 64, "precision": "fp32",
              "logging": {"progress": False}}
    data = {"sft": synthetic_files["sft"], "preference": synthetic_files["preference"]}
    one = tandem.train({**common, "method": "sft", "output_dir": str(tmp_path / "one")}, model=str(tiny_model_dir), data=data)
    two = tandem.train({**common, "method": "sequential", "output_dir": str(tmp_path / "two")}, model=str(tiny_model_dir),
                       data=data)
    forced = tandem.train({**common, "method": "sft", "output_dir": str(tmp_path / "forced"),
                           "checkpoint": {"stage_weights": True}}, model=str(tiny_model_dir), data=data)
    assert not (one.dir / "stages" / "start.safetensors").exists()
    assert (two.dir / "stages" / "start.safetensors").exists() and (two.dir / "stages" / "01-sft" / "end.safetensors").exists()
    assert (forced.dir / "stages" / "start.safetensors").exists()


def test_tensorboard_overlays_train_and_validation(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tandem.io.metrics import MetricsLog, overlay_layout, tracker_values

    log = MetricsLog(tmp_path, report_to=["tensorboard"])
    log.write({"split": "train", "stage": "01-sft", "step": 1, "loss": 2.0, "lr": 1e-3})
    log.write({"split": "val", "stage": "01-sft", "step": 1, "sft/loss": 2.5})
    log.close()
    train_tags = set(tracker_values({"split": "train", "stage": "01-sft", "loss": 2.0}))
    val_tags = set(tracker_values({"split": "val", "stage": "01-sft", "sft/loss": 2.5}))
    chart = overlay_layout()["train and validation"]["sft loss"]
    pattern = re.compile(chart[1][0])
    assert chart[0] == "Multiline" and {t for t in train_tags | val_tags if pattern.match(t)} == {"train/sft/loss",
                                                                                                 "val/sft/loss"}
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    events.Reload()
    assert list(events.PluginTagToContent("custom_scalars")) == ["custom_scalars__config__"]  # the overlay layout
