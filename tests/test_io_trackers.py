"""MetricsLog: metrics.jsonl plus the trackers of logging.report_to (tensorboard, wandb offline, mlflow file store),
each objective's loss under its own tag, the resolved recipe as hyperparameters."""

from __future__ import annotations

import glob
import json
import time
import struct

import pytest

from tandem.io.metrics import MetricsLog, check_trackers, flat_config, role_of, tracker_values

RECIPE = {"name": "hbat-demo", "model": {"name_or_path": "tiny", "lora": None},
          "optimizer": {"lr": 1e-5, "betas": [0.9, 0.999]}, "schedule": {"method": "hbat", "parts": 2}}
# an HBAT run: SFT stage (steps 1-2), preference stage (steps 3-4), validation at each stage end
ROWS = [
    {"split": "train", "stage": "01-sft-1", "stage_index": 0, "step": 1, "stage_step": 1, "loss": 2.0, "lr": 1e-5},
    {"split": "train", "stage": "01-sft-1", "stage_index": 0, "step": 2, "stage_step": 2, "loss": 1.5, "lr": 1e-5},
    {"split": "val", "stage": "01-sft-1", "stage_index": 0, "step": 2, "sft/loss": 1.6, "preference/loss": 0.7},
    {"split": "train", "stage": "02-pref-1", "stage_index": 1, "step": 3, "stage_step": 1, "loss": 0.69,
     "rewards/accuracy": 0.5, "lr": 1e-5},
    {"split": "train", "stage": "02-pref-1", "stage_index": 1, "step": 4, "stage_step": 2, "loss": 0.6,
     "rewards/accuracy": 1.0, "lr": 1e-5},
    {"split": "val", "stage": "02-pref-1", "stage_index": 1, "step": 4, "sft/loss": 1.7, "preference/loss": 0.62},
]


def test_role_of_a_row_from_its_role_key_or_stage_name():
    assert role_of({"stage": "03-sft-2"}) == "sft"
    assert role_of({"stage": "02-pref-1"}) == "preference"
    assert role_of({"stage": "01-reward"}) == "reward"
    assert role_of({"stage": "01-sft", "role": "preference"}) == "preference"  # an explicit role wins
    assert role_of({"stage": "custom"}) is None and role_of({}) is None


def test_tracker_values_split_prefix_and_role_loss_tag():
    assert tracker_values(ROWS[0]) == {"train/loss": 2.0, "train/lr": 1e-5, "train/sft/loss": 2.0}
    assert tracker_values(ROWS[3])["train/preference/loss"] == 0.69
    assert tracker_values(ROWS[2]) == {"val/sft/loss": 1.6, "val/preference/loss": 0.7}
    assert tracker_values({"split": "train", "stage": "01-sft", "step": 1, "loss": float("nan")}) == {}


def test_flat_config_scalars_only():
    assert flat_config(RECIPE) == {"name": "hbat-demo", "model.name_or_path": "tiny", "model.lora": "null",
                                   "optimizer.lr": 1e-5, "optimizer.betas": "[0.9, 0.999]",
                                   "schedule.method": "hbat", "schedule.parts": 2}


def test_unknown_or_missing_tracker_is_one_clear_error(monkeypatch, tmp_path):
    import importlib.util

    with pytest.raises(ValueError, match="unknown tracker 'wandbb'; choose from tensorboard, wandb, mlflow"):
        MetricsLog(tmp_path, report_to=["wandbb"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "mlflow" else real(n, *a))
    with pytest.raises(ValueError, match=r"mlflow is not installed; pip install mlflow"):
        check_trackers(["mlflow"])
    assert check_trackers(["none"]) == [] and check_trackers(["tensorboard", "tensorboard"]) == ["tensorboard"]


def _write_all(log: MetricsLog) -> None:
    for r in ROWS:
        log.write(r)
    log.close()


def test_tensorboard_gets_role_tags_and_hparams(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _write_all(MetricsLog(tmp_path, report_to=["tensorboard"], config=RECIPE))
    assert [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == ROWS
    ea = EventAccumulator(str(tmp_path / "tb"))
    ea.Reload()
    series = {t: [(e.step, round(e.value, 4)) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}
    assert series["train/sft/loss"] == [(1, 2.0), (2, 1.5)]
    assert series["train/preference/loss"] == [(3, 0.69), (4, 0.6)]
    assert series["train/loss"] == [(1, 2.0), (2, 1.5), (3, 0.69), (4, 0.6)]
    assert series["val/sft/loss"] == [(2, 1.6), (4, 1.7)]
    hparams = list((tmp_path / "tb").rglob("hparams.yml"))
    assert hparams and "optimizer.lr" in hparams[0].read_text()


def test_tensorboard_flag_is_the_same_tracker(tmp_path):
    log = MetricsLog(tmp_path, tensorboard=True, report_to=["tensorboard"])
    assert [t.name for t in log.trackers] == ["tensorboard"]
    log.close()
    assert MetricsLog(tmp_path / "other", tensorboard=True, enabled=False).trackers == []


def _wandb_records(path):
    """The records of an offline wandb run file (its log format: 7-byte file header, 32 KiB blocks of records with
    a 7-byte header: crc32, length, type FULL/FIRST/MIDDLE/LAST), parsed with wandb's own protobufs."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        buf = data[pos + 7:pos + 7 + length] if kind in (1, 2) else buf + data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            r = pb.Record()
            r.ParseFromString(buf)
            out.append(r)
    return out


@pytest.fixture
def offline_env(tmp_path, monkeypatch):
    for k, v in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": str(tmp_path / "wbcfg"),
                 "WANDB_CACHE_DIR": str(tmp_path / "wbcache"), "WANDB_DATA_DIR": str(tmp_path / "wbdata"),
                 "MLFLOW_TRACKING_URI": f"file:{tmp_path / 'mlruns'}", "MLFLOW_ALLOW_FILE_STORE": "true",
                 "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}.items():
        monkeypatch.setenv(k, v)
    return tmp_path


def test_wandb_offline_run_has_role_curves_and_recipe(offline_env):
    pytest.importorskip("wandb", reason="wandb not installed (pip install 'tandem[trackers]')")
    run = offline_env / "run"
    run.mkdir()
    _write_all(MetricsLog(run, report_to=["wandb"], project="tandem-test", run_name="hbat-s0", config=RECIPE))
    (path,) = glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb"))
    for _ in range(50):  # wandb's writer process may still be flushing the offline file on a loaded machine
        recs = _wandb_records(path)
        if any(r.WhichOneof("record_type") == "run" for r in recs):
            break
        time.sleep(0.2)
    meta = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
    assert meta.project == "tandem-test" and meta.display_name == "hbat-s0"
    config = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for r in recs if r.WhichOneof("record_type") == "config"
              for i in r.config.update}
    assert config["optimizer"] == RECIPE["optimizer"] and config["schedule"] == RECIPE["schedule"]
    hist = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item} for r in recs
            if r.WhichOneof("record_type") == "history"]
    curve = lambda tag: [(h["_step"], h[tag]) for h in hist if tag in h]  # noqa: E731
    assert curve("train/sft/loss") == [(1, 2.0), (2, 1.5)]
    assert curve("train/preference/loss") == [(3, 0.69), (4, 0.6)]
    assert curve("val/preference/loss") == [(2, 0.7), (4, 0.62)]


def test_mlflow_file_store_run_has_role_curves_and_recipe_params(offline_env):
    mlflow = pytest.importorskip("mlflow", reason="mlflow not installed (pip install 'tandem[trackers]')")
    run = offline_env / "run"
    run.mkdir()
    _write_all(MetricsLog(run, report_to=["mlflow"], project="tandem-test", run_name="hbat-s0", config=RECIPE))
    client = mlflow.tracking.MlflowClient()
    (found,) = client.search_runs([client.get_experiment_by_name("tandem-test").experiment_id])
    assert found.info.run_name == "hbat-s0"
    assert found.data.params["optimizer.lr"] == "1e-05" and found.data.params["schedule.method"] == "hbat"
    curve = lambda tag: [(m.step, m.value) for m in client.get_metric_history(found.info.run_id, tag)]  # noqa: E731
    assert curve("train/sft/loss") == [(1, 2.0), (2, 1.5)]
    assert curve("train/preference/loss") == [(3, 0.69), (4, 0.6)]
    assert curve("val/sft/loss") == [(2, 1.6), (4, 1.7)]


def test_a_tracker_that_cannot_start_is_one_line(offline_env, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus-scheme://nowhere")
    with pytest.raises(RuntimeError, match=r"^logging.report_to mlflow: could not start \(") as e:
        MetricsLog(offline_env, report_to=["mlflow"])
    assert "\n" not in str(e.value)
