"""tandem.distributed piece by piece: the launch settings and the refusals (no process group needed), and, in 2 gloo
processes (torchrun), every regularizer's arithmetic on FSDP2-sharded parameters against the same regularizer on
an unsharded copy of the model, whole-tensor sums against hand-computed values, and the weight files."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tandem.distributed.settings import FSDPSettings, UnsupportedDistributed, check_supported, read_settings
from tandem.distributed.tensors import local, whole_sums

FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
            "FSDP_RESHARD_AFTER_FORWARD": "true"}


def test_no_fsdp_in_the_launch_means_no_settings():
    assert read_settings({}) is None
    assert read_settings({"ACCELERATE_USE_FSDP": "false"}) is None


def test_fsdp2_settings_are_read_from_the_accelerate_environment():
    s = read_settings({**FSDP_ENV, "FSDP_OFFLOAD_PARAMS": "true", "FSDP_TRANSFORMER_CLS_TO_WRAP": "LlamaDecoderLayer, X"})
    assert s == FSDPSettings(reshard_after_forward=True, offload_params=True, wrap="layers",
                             layer_classes=("LlamaDecoderLayer", "X"))
    assert read_settings({**FSDP_ENV, "FSDP_AUTO_WRAP_POLICY": "NO_WRAP"}).wrap == "root"


@pytest.mark.parametrize("env, message", [
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, "DeepSpeed (ZeRO) is not supported"),
    ({**FSDP_ENV, "ACCELERATE_USE_DEEPSPEED": "true"}, "DeepSpeed (ZeRO) is not supported"),
    ({**FSDP_ENV, "FSDP_VERSION": "1"}, "FSDP version 1 is not supported: set fsdp_version: 2"),
    ({k: v for k, v in FSDP_ENV.items() if k != "FSDP_VERSION"}, "FSDP version 1 is not supported"),
    ({**FSDP_ENV, "FSDP_ACTIVATION_CHECKPOINTING": "true"}, "fsdp_activation_checkpointing: true is not supported"),
    ({**FSDP_ENV, "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}, "fsdp_cpu_ram_efficient_loading: true is not supported"),
    ({**FSDP_ENV, "FSDP_AUTO_WRAP_POLICY": "SIZE_BASED_WRAP"}, "fsdp_auto_wrap_policy: SIZE_BASED_WRAP"),
    ({**FSDP_ENV, "FSDP_RESHARD_AFTER_FORWARD": "false"}, "fsdp_reshard_after_forward: false is not supported"),
])
def test_unsupported_launch_options_are_refused_with_one_line(env, message):
    with pytest.raises(UnsupportedDistributed) as e:
        read_settings(env)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kw, message", [
    ({"loops": {"offline", "ppo"}}, "PPO stages are not supported with FSDP"),
    ({"probe_every": 5}, "probe.every > 0 is not supported with FSDP"),
    ({"mixed_precision": "fp16"}, "precision fp16 is not supported with FSDP"),
])
def test_unsupported_combinations_are_refused(kw, message):
    args = {"loops": {"offline"}, "probe_every": 0, "mixed_precision": "no", "num_processes": 2, **kw}
    with pytest.raises(UnsupportedDistributed, match=message.replace("(", r"\(").replace(".", r"\.")):
        check_supported(FSDPSettings(), **args)


def test_supported_combinations_pass_and_one_process_trains_unsharded(caplog):
    s = FSDPSettings()
    assert check_supported(s, loops={"offline"}, probe_every=0, mixed_precision="bf16", num_processes=8) is s
    assert check_supported(None, loops={"ppo"}, probe_every=3, mixed_precision="fp16", num_processes=8) is None
    with caplog.at_level("WARNING", logger="tandem"):
        assert check_supported(s, loops={"offline"}, probe_every=0, mixed_precision="no", num_processes=1) is None
    assert "FSDP config with one process" in caplog.text


def test_plain_tensors_need_no_reduction():
    t = torch.arange(6.0).reshape(2, 3)
    assert local(t) is t
    sums = torch.tensor([1.0, 2.0])
    assert whole_sums([t, t], sums) is sums


def test_train_refuses_ppo_under_fsdp_before_writing(tmp_path, tiny_model_dir, synthetic_files, monkeypatch):
    from helpers_ppo import ppo_recipe
    from helpers_recipe import base_raw, with_overrides

    from tandem.pipelines.train import train

    for k, v in FSDP_ENV.items():
        monkeypatch.setenv(k, v)
    r = ppo_recipe(tmp_path / "ppo", tiny_model_dir, synthetic_files)
    with pytest.raises(UnsupportedDistributed, match="PPO stages are not supported with FSDP"):
        train(r)
    assert not Path(r.output_dir).exists()
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    r = with_overrides(base_raw(tmp_path, tiny_model_dir, synthetic_files, "hbat"), {})
    with pytest.raises(UnsupportedDistributed, match="DeepSpeed"):
        train(r)
    assert not Path(r.output_dir).exists()


WORKER = r'''
import json, sys, tempfile
from pathlib import Path
import torch, torch.distributed as dist
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from transformers import LlamaConfig, LlamaForCausalLM
from safetensors.torch import load_file
from tandem.distributed import FSDPSettings, local, shard_model, whole_sums, save_final
from tandem.distributed.tensors import world_size
from tandem.io.weights import load_trainable_file, save_trainable
from tandem.regularizers import build
from tandem.regularizers.base import StageData, StageInfo

dist.init_process_group("gloo")
rank = dist.get_rank()
root = Path(sys.argv[1])

# whole_sums against hand-computed values: 0^2 + ... + 7^2 = 140 over a [4, 2] tensor sharded on dim 0
mesh = torch.distributed.device_mesh.init_device_mesh("cpu", (2,))
dt = distribute_tensor(torch.arange(8.0).reshape(4, 2), mesh, [Shard(0)])
assert local(dt).shape == (2, 2)
got = whole_sums([dt, torch.ones(3)], torch.stack([(local(dt) ** 2).sum(), torch.tensor(3.0)]))
assert got.tolist() == [140.0, 3.0], got

def run(lora, out):
    def make():
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=96, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                          num_key_value_heads=1, tie_word_embeddings=False)
        m = LlamaForCausalLM(cfg)
        if lora:
            from peft import LoraConfig, get_peft_model
            m = get_peft_model(m, LoraConfig(r=2, lora_alpha=4, target_modules="all-linear"))
            for n, p in m.named_parameters():
                if "lora_B" in n:
                    torch.nn.init.normal_(p, std=0.02)
        return m

    plain, sharded = make(), make()
    shard_model(sharded, FSDPSettings(), "cpu")
    assert all(isinstance(p, DTensor) for p in sharded.parameters())
    names = [n for n, p in plain.named_parameters() if p.requires_grad]
    assert names == [n for n, p in sharded.named_parameters() if p.requires_grad]

    def full(t):
        return t.full_tensor() if isinstance(t, DTensor) else t

    def step(m, seed, freeze=None):
        """The same deterministic weight change on both models (an SGD step on a fixed batch); ``freeze``'s
        grad_term takes the frozen tensors' gradients away, as in the engine."""
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(3, 96, (2, 10), generator=g)
        loss = m(input_ids=ids, labels=ids).loss
        loss.backward()
        if freeze is not None:
            freeze.grad_term(m)
        with torch.no_grad():
            for p in m.parameters():
                if p.grad is not None:
                    p.add_(p.grad, alpha=-0.5)
                    p.grad = None

    def grads_after(reg, m):
        for p in m.parameters():
            p.grad = None
        reg.grad_term(m)
        return {n: None if p.grad is None else full(p.grad).clone() for n, p in m.named_parameters()}

    def nbytes(state):
        if isinstance(state, torch.Tensor):
            return state.numel() * state.element_size()
        if isinstance(state, dict):
            return sum(nbytes(v) for v in state.values())
        return sum(nbytes(v) for v in state) if isinstance(state, (list, tuple)) else 0

    ifa1, hpa1, ifa2 = StageInfo(0, "ifa-1", "ifa"), StageInfo(1, "hpa-1", "hpa"), StageInfo(2, "ifa-2", "ifa")
    results = {}
    for name, kw in [("ewc", {"lam": 3.0, "f_max": 20.0}), ("l2", {"lam": 2.0, "anchor": "initial", "stages": "all"}),
                     ("l1", {"lam": 0.5, "anchor": "initial", "stages": "all"}), ("freeze", {"percent": 25.0}),
                     ("fisher", {"lam": 4.0, "samples": 2})]:
        plain, sharded = make(), make()
        shard_model(sharded, FSDPSettings(), "cpu")
        regs = {"plain": build(name, **kw), "sharded": build(name, **kw)}
        g = torch.Generator().manual_seed(1)
        data_ids = torch.randint(3, 96, (2, 8), generator=g)
        def batches(n):
            return [{"input_ids": data_ids[i:i+1], "labels": data_ids[i:i+1], "position_ids": torch.arange(8)[None],
                     "seq_ids": torch.zeros(1, 8, dtype=torch.long)} for i in range(min(n, 2))]
        data = StageData(batches)
        seen = {}
        for m_name, m in (("plain", plain), ("sharded", sharded)):
            reg = regs[m_name]
            for i, st in enumerate((ifa1, hpa1, ifa2)):
                reg.before_stage(m, st)
                step(m, 10 + i, reg if name == "freeze" else None)
                step(m, 20 + i, reg if name == "freeze" else None)
                if i < 2:
                    reg.after_stage(m, st, data)
            seen[m_name] = {"grads": grads_after(reg, m), "penalty": reg.last_penalty, "report": reg.report(),
                            "pen_fn": reg.penalty(m), "frozen": list(reg.frozen) if name == "freeze" else [],
                            "state_bytes": nbytes(reg.state_dict())}
            reg.after_stage(m, ifa2, data)
        a, b = seen["plain"], seen["sharded"]
        assert a["frozen"] == b["frozen"], (name, a["frozen"], b["frozen"])
        assert sum(g is not None for g in a["grads"].values()) > 0 or name == "freeze", name
        for n in a["grads"]:
            assert (a["grads"][n] is None) == (b["grads"][n] is None), (name, n)
            if a["grads"][n] is not None:
                torch.testing.assert_close(b["grads"][n], a["grads"][n], rtol=1e-5, atol=1e-7, msg=lambda m: f"{name} {n}: {m}")
        assert abs(a["penalty"] - b["penalty"]) <= 1e-5 * max(abs(a["penalty"]), 1e-12), (name, a["penalty"], b["penalty"])
        assert abs(a["pen_fn"] - b["pen_fn"]) <= 1e-5 * max(abs(a["pen_fn"]), 1e-12), (name, a["pen_fn"], b["pen_fn"])
        if name in ("ewc", "l2", "l1", "fisher"):
            assert a["penalty"] > 0, (name, a["penalty"])
        if a["report"] is not None:
            for n, t in a["report"]["tensors"].items():
                for k in ("ac_ifa", "ac_hpa", "f_ifa", "f_hpa"):
                    x, y = t[k], b["report"]["tensors"][n][k]
                    assert (x is None) == (y is None) and (x is None or abs(x - y) <= 1e-6 * abs(x) + 1e-15), (name, n, k, x, y)
        results[name] = {"penalty": a["penalty"], "bytes_plain": a["state_bytes"], "bytes_sharded": b["state_bytes"],
                         "frozen": len(a["frozen"])}

    # weight files: the trainable tensors of the sharded model, gathered on process 0; loading gives each its slice
    f = out / "trainable.safetensors"
    save_trainable(sharded, f)
    dist.barrier()
    if rank == 0:
        assert sorted(load_file(str(f))) == sorted(names)
    with torch.no_grad():
        for p in sharded.parameters():
            if p.requires_grad:
                local(p).zero_()
    load_trainable_file(sharded, f)
    saved = load_file(str(f))
    for n, p in sharded.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(full(p).detach(), saved[n])
    save_final(sharded, None, out / "final")
    if rank == 0:
        print(f"RESULT {'lora' if lora else 'full'} " + json.dumps(results), flush=True)


for kind in ("full", "lora"):
    run(kind == "lora", root / kind)
if rank == 0:
    print("OK", flush=True)
dist.destroy_process_group()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_regularizers_on_sharded_parameters_match_unsharded(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", str(free_port()), str(script),
                        str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "OK" in p.stdout, (p.stdout[-2000:], p.stderr[-6000:])
    import json

    for line in (l for l in p.stdout.splitlines() if l.startswith("RESULT ")):
        kind, payload = line.split(" ", 2)[1:]
        results = json.loads(payload)
        print(f"\n{kind}: regularizer state bytes, 1 process vs each of 2 FSDP2 processes:",
              {k: (v["bytes_plain"], v["bytes_sharded"]) for k, v in results.items()})
        assert set(results) == {"ewc", "l2", "l1", "freeze", "fisher"} and results["freeze"]["frozen"] > 0
        for name, v in results.items():
            assert v["bytes_plain"] > 0 and 0.4 < v["bytes_sharded"] / v["bytes_plain"] < 0.6, (name, v)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "full" / "final")
    assert (tmp_path / "lora" / "final" / "adapter_model.safetensors").exists()
