"""The dtype policy (tandem.models.precision): hardware detection, what each requested precision resolves to, and
the weights it leaves (bf16 base, fp32 LoRA adapters, buffers untouched)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tandem.models.precision import EAGER_MAX_ROW, apply_precision, cpu_bf16_flags, resolve, training_attention

ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
OLD = "processor\t: 0\nflags\t\t: fpu sse2 avx2\n"
SAPPHIRE = "flags\t\t: avx512f amx_tile amx_bf16\n"
ARM = "Features\t: fp asimd bf16 i8mm\n"


def test_cpu_flags_detected_from_cpuinfo():
    assert cpu_bf16_flags(ZEN4) == ["avx512_bf16"]
    assert cpu_bf16_flags(SAPPHIRE) == ["amx_bf16"]
    assert cpu_bf16_flags(ARM) == ["bf16"]
    assert cpu_bf16_flags(OLD) == []


def test_auto_on_cpu_follows_the_flags():
    p = resolve("auto", device="cpu", cpuinfo=ZEN4)
    assert (p.name, p.weights, p.autocast, p.loss_scaling) == ("bf16", torch.bfloat16, "no", False)
    assert "avx512_bf16" in p.describe() and "master" in p.describe()
    q = resolve("auto", device="cpu", cpuinfo=OLD)
    assert (q.name, q.weights) == ("fp32", None)  # keeps model.dtype
    assert "no native bf16" in q.describe()


@pytest.mark.parametrize("var", ["ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"])
def test_auto_is_fp32_when_onednn_is_capped_below_bf16(monkeypatch, var):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv(var, "avx2")  # oneDNN would emulate bf16: auto must not pick it
    p = resolve("auto", device="cpu", cpuinfo=ZEN4)
    assert p.name == "fp32" and f"{'ONEDNN_MAX_CPU_ISA'}=AVX2" in p.describe()
    assert resolve("bf16", device="cpu", cpuinfo=ZEN4).name == "bf16"  # a recipe can still force it
    for cap in ("AVX512_CORE_BF16", "AVX512_CORE_AMX", "DEFAULT"):  # caps that keep bf16
        monkeypatch.setenv(var, cap)
        assert resolve("auto", device="cpu", cpuinfo=ZEN4).name == "bf16"


def test_auto_attention_is_eager_only_for_short_bf16_rows_on_cpu():
    bf16, fp32 = resolve("auto", device="cpu", cpuinfo=ZEN4), resolve("auto", device="cpu", cpuinfo=OLD)
    assert training_attention("auto", bf16, "cpu", 256)[0] == "eager" == training_attention("auto", bf16, "cpu", 64)[0]
    assert "eager" in training_attention("auto", bf16, "cpu", 256)[1]
    assert training_attention("auto", bf16, "cpu", EAGER_MAX_ROW + 1)[0] is None  # long rows: the flash kernel
    assert training_attention("auto", bf16, "cpu", None)[0] is None  # one row per micro-batch: length unknown
    assert training_attention("auto", bf16, "cpu", 128, prefix_sharing=True)[0] is None  # blocks outgrow the cap
    assert training_attention("auto", fp32, "cpu", 128)[0] is None  # fp32: sdpa measured faster
    assert training_attention("auto", resolve("bf16", device="cpu", cpuinfo=ZEN4), "cuda", 128)[0] is None
    for asked in ("sdpa", "eager", None, "flash_attention_2"):  # anything but auto is the user's choice
        assert training_attention(asked, bf16, "cpu", 128)[0] == asked


def test_explicit_precisions():
    assert resolve("fp32", device="cpu", cpuinfo=ZEN4).weights is torch.float32  # a recipe can force fp32
    f16 = resolve("fp16", device="cpu", cpuinfo=ZEN4)
    assert (f16.weights, f16.autocast, f16.loss_scaling) == (torch.float32, "fp16", True)
    b = resolve("bf16", device="cpu", cpuinfo=OLD)
    assert b.weights is torch.bfloat16 and "emulated" in b.reason
    with pytest.raises(ValueError, match="precision"):
        resolve("int8", device="cpu")


def tiny_llama():
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def test_full_model_bf16_parameters_fp32_buffers():
    m = apply_precision(tiny_llama(), resolve("bf16", device="cpu", cpuinfo=ZEN4))
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    assert m.model.rotary_emb.inv_freq.dtype == torch.float32  # rotary frequencies keep fp32


def test_lora_bf16_and_the_fp32_trainable_option():
    from tandem.models import apply_lora

    m = apply_lora(tiny_llama(), r=2, alpha=4)
    apply_precision(m, resolve("auto", device="cpu", cpuinfo=ZEN4))
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}  # adapters too: their fp32 masters are the optimizer's
    m = apply_lora(tiny_llama(), r=2, alpha=4)
    apply_precision(m, resolve("auto", device="cpu", cpuinfo=ZEN4), fp32_trainable=True)
    trainable = {p.dtype for p in m.parameters() if p.requires_grad}
    frozen = {p.dtype for p in m.parameters() if not p.requires_grad}
    assert trainable == {torch.float32} and frozen == {torch.bfloat16}
    out = m(input_ids=torch.tensor([[1, 2, 3]])).logits  # peft runs the fp32 adapters on the bf16 base
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in m.parameters() if p.requires_grad)


def test_auto_without_bf16_leaves_weights_and_fp32_forces():
    m = tiny_llama().to(torch.bfloat16)
    apply_precision(m, resolve("auto", device="cpu", cpuinfo=OLD))
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    apply_precision(m, resolve("fp32", device="cpu"))
    assert {p.dtype for p in m.parameters()} == {torch.float32}


# ---- through tandem train ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("lora", [False, True])
def test_train_bf16_logs_the_choice_and_keeps_fp32_updates(tmp_path, tiny_model_dir, synthetic_files, lora, caplog,
                                                         monkeypatch):
    """``precision: bf16``: the run log names it; a full fine-tune and a LoRA run (base and adapters) train bf16
    weights through fp32 masters (the optimizer); the loss stays finite and goes down."""
    import json
    from pathlib import Path

    from helpers_recipe import base_raw, with_overrides

    import tandem.engine.run as engine_run
    from tandem.optim import MasterAdamW
    from tandem.pipelines.train import train

    over = {"precision": "bf16", "schedule.max_steps": 4, "data.val_size": 0, "optimizer.lr": 3e-3}
    if lora:
        over["model.lora"] = {"r": 4, "alpha": 8}
    r = with_overrides(base_raw(tmp_path, tiny_model_dir, synthetic_files, "sft"), over)
    seen = {}
    real = engine_run.make_optimizer

    def spy(model, cfg, total, role=""):
        opt, sched = real(model, cfg, total, role)
        seen["opt"] = type(opt)
        seen["dtypes"] = {(p.requires_grad, p.dtype) for p in model.parameters()}
        return opt, sched

    monkeypatch.setattr(engine_run, "make_optimizer", spy)
    with caplog.at_level("INFO", logger="tandem"):
        train(r)
    assert "precision bf16: asked for in the recipe" in caplog.text
    assert seen["opt"] is MasterAdamW
    assert seen["dtypes"] == ({(True, torch.bfloat16), (False, torch.bfloat16)} if lora else {(True, torch.bfloat16)})
    rows = [json.loads(x) for x in (Path(r.output_dir) / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in rows if x["split"] == "train"]
    assert len(losses) == 4 and all(x == x for x in losses) and losses[-1] < losses[0]
