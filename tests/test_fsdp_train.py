"""FSDP2 for real on CPU: ``accelerate launch --config_file configs/accelerate/fsdp2-single-node.yaml`` with 2 gloo
processes against one plain process, on the tiny Llama (hbat: modified EWC, 2 parts; 2 steps per stage).

- the sharded run's importance.json, losses, EWC penalties and final/ weights equal the 1-process run's within
  float tolerance (reductions run in another order), for full fine-tuning and for LoRA;
- the parameters really were DTensor shards while training: every trainable tensor of every sharded checkpoint
  is stored as one chunk per process (torch.distributed.checkpoint metadata), and the regularizer state of each
  process holds half of the elements of the 1-process state (printed: the per-process regularizer memory);
- SIGKILL in the middle of a stage with EWC active, then ``--resume``: the same final weights as the
  uninterrupted sharded run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers_recipe import base_raw, with_overrides
from safetensors.torch import load_file

from tandem.config.recipe import dump_recipe

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "accelerate" / "fsdp2-single-node.yaml"
ACCELERATE = Path(sys.executable).with_name("accelerate")
EWC = {"lam": 5.0, "f_max": 50.0, "normalise": "zscore", "temperature": 1.0}
COMMON = {"schedule.parts": 2, "schedule.max_steps": 8, "hbat.ewc": EWC, "checkpoint.every": 1,
          "checkpoint.keep": 3, "logging.tensorboard": False, "data.val_size": 4, "optimizer.lr": 3e-3,
          "optimizer.eps": 1e-4}  # Adam eps: updates of near-zero gradients do not amplify float noise
KILL_AFTER = 5  # global step 5 = first step of 03-sft-2: mid-stage, the EWC penalty (hpa anchor) active

pytestmark = pytest.mark.skipif(not ACCELERATE.exists(), reason="accelerate CLI missing")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(recipe: Path, procs: int, resume: bool = False) -> list[str]:
    tail = ["-m", "tandem.cli.main", "train", str(recipe), "--no-progress"] + (["--resume"] if resume else [])
    if procs == 1:
        return [sys.executable, *tail]
    return [str(ACCELERATE), "launch", "--config_file", str(CONFIG), "--num_processes", str(procs),
            "--mixed_precision", "no", "--main_process_port", str(free_port()), *tail]


def launch(jobs: list[tuple[Path, int, bool, int | None]]) -> list[subprocess.CompletedProcess]:
    """Run ``(recipe, processes, resume, kill_after)`` jobs side by side; their results in order."""
    procs = []
    for recipe, n, resume, kill in jobs:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop("TANDEM_FAULT_KILL_AFTER_STEP", None)
        if kill is not None:
            env["TANDEM_FAULT_KILL_AFTER_STEP"] = str(kill)
        args = command(recipe, n, resume)
        procs.append((args, subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    out = []
    for args, p in procs:
        stdout, stderr = p.communicate(timeout=600)
        out.append(subprocess.CompletedProcess(args, p.returncode, stdout, stderr))
    return out


def write_recipe(d: Path, model_dir, files, **over) -> Path:
    r = with_overrides(base_raw(d, model_dir, files, "hbat"), {**COMMON, **over})
    path = d / "recipe.yaml"
    d.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_recipe(r))
    return path


def pair(tmp: Path, model_dir, files, **over) -> dict[str, Path]:
    """A 1-process and a 2-process FSDP2 run of the same recipe; their run dirs."""
    recipes = {name: write_recipe(tmp / name, model_dir, files, **over) for name in ("one", "fsdp")}
    one, two = launch([(recipes["one"], 1, False, None), (recipes["fsdp"], 2, False, None)])
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-5000:]
    assert "FSDP2: sharded" in two.stderr, two.stderr[-3000:]
    return {"one": tmp / "one" / "run", "fsdp": tmp / "fsdp" / "run", "fsdp_recipe": recipes["fsdp"]}


@pytest.fixture(scope="module")
def full(tmp_path_factory, tiny_model_dir, synthetic_files):
    return pair(tmp_path_factory.mktemp("fsdp-full"), tiny_model_dir, synthetic_files)


@pytest.fixture(scope="module")
def lora(tmp_path_factory, tiny_model_dir, synthetic_files):
    return pair(tmp_path_factory.mktemp("fsdp-lora"), tiny_model_dir, synthetic_files,
                **{"model.lora": {"r": 4, "alpha": 8}, "optimizer.lr": 1e-2})


def rows(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]


def assert_same_importance(a: Path, b: Path) -> int:
    stages = sorted(p.parent.name for p in (a / "stages").glob("*/importance.json"))
    assert stages == sorted(p.parent.name for p in (b / "stages").glob("*/importance.json")) and len(stages) == 4
    for s in stages:
        x, y = (json.loads((r / "stages" / s / "importance.json").read_text()) for r in (a, b))
        assert x["stages"] == y["stages"] and x["config"] == y["config"]
        assert x["tensors"].keys() == y["tensors"].keys()
        for n, t in x["tensors"].items():
            u = y["tensors"][n]
            for k in ("ac_ifa", "ac_hpa", "f_ifa", "f_hpa"):
                assert (t[k] is None) == (u[k] is None), (s, n, k)
                if t[k] is not None:
                    assert u[k] == pytest.approx(t[k], rel=2e-3, abs=1e-12), (s, n, k)
            for stage, c in t["change"].items():
                assert u["change"][stage] == pytest.approx(c, rel=2e-3, abs=1e-15), (s, n, stage)
    return len(stages)


def assert_same_rows(a: Path, b: Path) -> None:
    ra, rb = rows(a), rows(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == list(range(1, 9))
    assert [r["loss"] for r in rb] == pytest.approx([r["loss"] for r in ra], rel=1e-4, abs=1e-5)
    pa, pb = [r["reg/penalty"] for r in ra], [r["reg/penalty"] for r in rb]
    assert max(pa) > 0  # the EWC penalty is active in the later stages
    assert pb == pytest.approx(pa, rel=2e-3, abs=1e-9)


def assert_sharded_while_training(run: Path, trainable: set[str]) -> None:
    """Every trainable tensor of every checkpoint is stored as one chunk per process (it was a DTensor shard)."""
    import torch.distributed.checkpoint as dcp

    ckpts = sorted((run / "checkpoints").iterdir())
    assert ckpts
    for c in ckpts:
        assert json.loads((c / "sharded.json").read_text())["world_size"] == 2
        meta = dcp.FileSystemReader(str(c / "dcp")).read_metadata().state_dict_metadata
        saved = {k[len("model."):]: v for k, v in meta.items() if k.startswith("model.")}
        assert set(saved) == trainable
        for name, m in saved.items():
            assert len(m.chunks) == 2, name
            assert sum(ch.sizes[0] for ch in m.chunks) == m.size[0], name


def test_fsdp_hbat_matches_one_process(full):
    one, fsdp = full["one"], full["fsdp"]
    assert_same_importance(one, fsdp)
    assert_same_rows(one, fsdp)
    a, b = load_file(one / "final" / "model.safetensors"), load_file(fsdp / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    start = load_file(one / "stages" / "start.safetensors")
    assert max(float((a[k] - start[k]).abs().max()) for k in start) > 1e-3  # it trained
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=2e-5)
    for s in ("01-sft-1", "04-pref-2"):  # stage weights are consolidated too
        x, y = (load_file(r / "stages" / s / "end.safetensors") for r in (one, fsdp))
        for k in x:
            torch.testing.assert_close(y[k], x[k], rtol=1e-4, atol=2e-5)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(fsdp / "final")
    assert_sharded_while_training(fsdp, set(a))


def regularizer_bytes(state) -> int:
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(regularizer_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(regularizer_bytes(v) for v in state)
    return 0


def test_fsdp_regularizer_memory_per_process_halves(full):
    """The EWC snapshot and anchors of each process hold its slices only (the state written mid-stage 4, when
    the run holds the stage-start snapshot and the IFA anchor)."""
    name = sorted(p.name for p in (full["one"] / "checkpoints").iterdir())[-1]
    one = regularizer_bytes(torch.load(full["one"] / "checkpoints" / name / "regularizer.pt", weights_only=True))
    files = sorted((full["fsdp"] / "checkpoints" / name / "regularizer").glob("rank*-of-00002.pt"))
    per_rank = [regularizer_bytes(torch.load(f, weights_only=True)) for f in files]
    print(f"\nregularizer state per process ({name}): 1 process {one} B; FSDP2 2 processes {per_rank} B "
          f"({[round(b / one, 3) for b in per_rank]} of 1 process)")
    assert len(per_rank) == 2 and one > 0
    assert sum(per_rank) == one  # the slices cover the tensors exactly once
    assert all(0.4 < b / one < 0.6 for b in per_rank)


def test_fsdp_lora_matches_one_process(lora):
    one, fsdp = lora["one"], lora["fsdp"]
    assert_same_importance(one, fsdp)
    assert_same_rows(one, fsdp)
    a = load_file(one / "final" / "adapter_model.safetensors")
    b = load_file(fsdp / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any("lora_B" in k for k in a)
    assert max(float(a[k].abs().max()) for k in a if "lora_B" in k) > 1e-3  # the adapters trained
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=2e-5)
    trainable = set(json.loads((fsdp / "stages" / "01-sft-1" / "importance.json").read_text())["tensors"])
    assert trainable and all("lora_" in n for n in trainable)
    assert_sharded_while_training(fsdp, trainable)
    from peft import AutoPeftModelForCausalLM

    AutoPeftModelForCausalLM.from_pretrained(fsdp / "final")


def test_fsdp_kill_and_resume_ends_with_the_same_weights(full, tmp_path, tiny_model_dir, synthetic_files):
    recipe = write_recipe(tmp_path / "killed", tiny_model_dir, synthetic_files)
    run = tmp_path / "killed" / "run"
    (killed,) = launch([(recipe, 2, False, KILL_AFTER)])
    assert killed.returncode != 0
    assert not (run / "final").exists()
    last = json.loads(max((run / "checkpoints").glob("*/state.json")).read_text())
    assert last["global_step"] == KILL_AFTER and not last["stage_done"]  # a mid-stage sharded checkpoint
    (resumed,) = launch([(recipe, 2, True, None)])
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    a = load_file(full["fsdp"] / "final" / "model.safetensors")
    b = load_file(run / "final" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
    ref = json.loads((full["fsdp"] / "stages" / "04-pref-2" / "importance.json").read_text())
    got = json.loads((run / "stages" / "04-pref-2" / "importance.json").read_text())
    assert got["stages"] == ref["stages"]
    for n, t in ref["tensors"].items():
        assert got["tensors"][n]["f_hpa"] == pytest.approx(t["f_hpa"], rel=1e-6)
    assert [r["step"] for r in rows(run)] == list(range(1, 9))  # no step logged twice
