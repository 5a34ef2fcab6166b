"""Issue 28, resume: checkpoint manifests, the fallback from an incomplete or corrupt checkpoint to the newest complete
and finite one (with one line saying so, and weights bit-identical to an uninterrupted run), and data fingerprints
(a resume whose data changed is refused, naming the file; ``--allow-change`` does not cover data)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers_recipe import base_raw, with_overrides

from tandem.io.checkpoints import MANIFEST, CheckpointError, checkpoint_problem, load_optim, newest_usable, write_manifest
from tandem.io.fingerprint import FINGERPRINTS
from tandem.io.rundir import RunDirError
from tandem.pipelines.train import train

CKPTS = ["stage00-step000002", "stage00-step000004", "stage00-step000006"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def recipe_at(tmp: Path, run: Path, model_dir, files, **over):
    raw = base_raw(tmp, model_dir, files)
    raw["output_dir"] = str(run)
    raw["data"]["val_size"] = 0
    raw["checkpoint"] = {"every": 2, "keep": 10}
    return with_overrides(raw, {"schedule.max_steps_per_stage": 6, **over})


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_model_dir, synthetic_files):
    """An uninterrupted 6-step SFT run with checkpoints at steps 2, 4 and 6 (the last one ends the stage)."""
    tmp = tmp_path_factory.mktemp("straight")
    files = {k: shutil.copy(v, tmp / Path(v).name) for k, v in synthetic_files.items()}
    r = recipe_at(tmp, tmp / "run", tiny_model_dir, files)
    train(r)
    return tmp, files, Path(r.output_dir)


def interrupted_copy(straight, dest: Path) -> Path:
    """The straight run as a kill after step 5 leaves it: checkpoints 2 and 4, no final model, no summary."""
    _, _, run = straight
    shutil.copytree(run, dest)
    for p in (dest / "final", dest / "checkpoints" / CKPTS[2]):
        shutil.rmtree(p)
    (dest / "summary.json").unlink()
    return dest


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _nan_weights(ckpt: Path) -> None:
    tensors = load_file(str(ckpt / "trainable.safetensors"))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, str(ckpt / "trainable.safetensors"))
    write_manifest(ckpt)  # a consistent manifest: the NaN itself must be caught


CORRUPTIONS = {
    "optimizer-missing": (lambda c: (c / "optimizer.pt").unlink(), "optimizer.pt is missing"),
    "weights-truncated": (lambda c: _truncate(c / "trainable.safetensors"), "trainable.safetensors has"),
    "state-garbage": (lambda c: (c / "state.json").write_text("{ not json"), "state.json"),
    "rng-truncated": (lambda c: _truncate(c / "rng.pt"), "rng.pt has"),
    "weights-nan": (_nan_weights, "NaN"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one_bit_identically(kind, straight, tmp_path, caplog,
                                                                                    tiny_model_dir):
    tmp, files, run = straight
    broken = interrupted_copy(straight, tmp_path / "broken")
    corrupt, why = CORRUPTIONS[kind]
    corrupt(broken / "checkpoints" / CKPTS[1])
    with caplog.at_level(logging.WARNING, logger="tandem"):
        train(recipe_at(tmp, broken, tiny_model_dir, files), resume=True)
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 1, caplog.text
    assert CKPTS[1] in lines[0] and why in lines[0] and f"resuming from {CKPTS[0]} instead" in lines[0]
    want, got = load_file(str(run / "final" / "model.safetensors")), load_file(str(broken / "final" / "model.safetensors"))
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want), "resumed weights differ from the uninterrupted run"


def test_every_checkpoint_has_a_manifest_of_all_its_files(straight):
    _, _, run = straight
    for name in CKPTS:
        ckpt = run / "checkpoints" / name
        listed = json.loads((ckpt / MANIFEST).read_text())["files"]
        on_disk = {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file() and p.name != MANIFEST}
        assert set(listed) == on_disk and {"trainable.safetensors", "state.json", "rng.pt"} <= on_disk
        assert all(meta["bytes"] == (ckpt / f).stat().st_size for f, meta in listed.items())
        assert checkpoint_problem(ckpt) is None
    mid = json.loads((run / "checkpoints" / CKPTS[1] / MANIFEST).read_text())["files"]
    assert {"optimizer.pt", "scheduler.pt"} <= set(mid)  # a mid-stage checkpoint holds what resuming exactly needs


@pytest.mark.parametrize("damage, why", [
    (lambda c: (c / MANIFEST).unlink(), "no manifest.json"),
    (lambda c: (c / MANIFEST).write_text("[]"), "manifest.json is unreadable"),
    (lambda c: (c / "scheduler.pt").unlink(), "scheduler.pt is missing"),
    (lambda c: _truncate(c / "optimizer.pt"), "optimizer.pt has"),
    (lambda c: (c / "python_rng.json").write_text("[1, 2, 3]"), "python_rng.json has"),
])
def test_checkpoint_problem_names_what_is_wrong(straight, tmp_path, damage, why):
    _, _, run = straight
    ckpt = shutil.copytree(run / "checkpoints" / CKPTS[1], tmp_path / "checkpoints" / CKPTS[1])
    damage(ckpt)
    assert why in checkpoint_problem(ckpt)


def test_no_usable_checkpoint_restarts_with_a_line(straight, tmp_path):
    _, _, run = straight
    root = tmp_path / "checkpoints"
    for name in CKPTS[:2]:
        shutil.copytree(run / "checkpoints" / name, root / name)
        (root / name / "rng.pt").unlink()
    path, skipped = newest_usable(root)
    assert path is None and [p.name for p, _ in skipped] == [CKPTS[1], CKPTS[0]]


def test_load_optim_refuses_a_missing_state_file(tmp_path):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(CheckpointError, match="optimizer.pt is missing"):
        load_optim(tmp_path, opt, None, None)


# ------------------------------------------------------------------------------------------- data fingerprints


@pytest.mark.parametrize("change, what", [
    (lambda f: f.write_text(f.read_text() + json.dumps({"prompt": "new", "response": "row"}) + "\n"), "bytes"),
    (lambda f: f.write_text("".join(f.read_text().splitlines(keepends=True)[:8])), "bytes"),
    (lambda f: f.write_text(f.read_text().replace("a", "b", 1) if "a" in f.read_text() else f.read_text() + " "),
     "changed"),
])
def test_resume_refuses_changed_data_naming_the_file(tmp_path, tiny_model_dir, synthetic_files, change, what):
    files = {k: shutil.copy(v, tmp_path / Path(v).name) for k, v in synthetic_files.items()}
    r = recipe_at(tmp_path, tmp_path / "run", tiny_model_dir, files, **{"schedule.max_steps_per_stage": 2})
    train(r)
    recorded = json.loads((tmp_path / "run" / FINGERPRINTS).read_text())
    assert recorded["data.sft"]["path"] == str(files["sft"]) and len(recorded["data.sft"]["sha256"]) == 64
    before = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "run").rglob("*"))
    change(Path(files["sft"]))
    for allow in ([], ["schedule.max_steps_per_stage"]):  # --allow-change does not cover data
        longer = with_overrides(r.model_dump(mode="json"), {"schedule.max_steps_per_stage": 3})
        with pytest.raises(RunDirError) as e:
            train(longer if allow else r, resume=True, allow_changes=allow)
        msg = str(e.value)
        assert "data.sft" in msg and str(files["sft"]) in msg and what in msg and "--allow-change does not" in msg
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "run").rglob("*")) == before


def test_a_data_file_gone_since_the_start_is_named(tmp_path):
    from tandem.io.fingerprint import changed_fingerprints, record_fingerprints

    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n')
    record_fingerprints(tmp_path, {"data.sft": str(data), "data.val.sft": str(tmp_path / "never.jsonl")})
    assert changed_fingerprints(tmp_path) == []
    data.unlink()
    assert changed_fingerprints(tmp_path) == [f"data.sft {data} is gone"]
    assert changed_fingerprints(tmp_path / "elsewhere") is None  # a run from before fingerprints: not checked


def test_unchanged_data_resumes(tmp_path, tiny_model_dir, synthetic_files):
    files = {k: shutil.copy(v, tmp_path / Path(v).name) for k, v in synthetic_files.items()}
    r = recipe_at(tmp_path, tmp_path / "run", tiny_model_dir, files, **{"schedule.max_steps_per_stage": 2})
    train(r)
    shutil.rmtree(tmp_path / "run" / "final")
    assert train(r, resume=True)["global_steps"] == 2
