"""The dtype policy (tandem.models.precision): hardware detection, what each requested precision resolves to, and
the weights it leaves (bf16 base, fp32 LoRA adapters, buffers untouched)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tandem.models.precision import apply_precision, cpu_bf16_flags, resolve

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
    m = apply_precision(tiny_llama(), resolve("bf16", device="cpu", cpuinfo=ZEN4), adapters=False)
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    assert m.model.rotary_emb.inv_freq.dtype == torch.float32  # rotary frequencies keep fp32


def test_lora_base_bf16_adapters_fp32():
    from tandem.models import apply_lora

    m = apply_lora(tiny_llama(), r=2, alpha=4)
    apply_precision(m, resolve("auto", device="cpu", cpuinfo=ZEN4), adapters=True)
    trainable = {p.dtype for p in m.parameters() if p.requires_grad}
    frozen = {p.dtype for p in m.parameters() if not p.requires_grad}
    assert trainable == {torch.float32} and frozen == {torch.bfloat16}
    out = m(input_ids=torch.tensor([[1, 2, 3]])).logits  # peft runs the fp32 adapters on the bf16 base
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in m.parameters() if p.requires_grad)


def test_auto_without_bf16_leaves_weights_and_fp32_forces():
    m = tiny_llama().to(torch.bfloat16)
    apply_precision(m, resolve("auto", device="cpu", cpuinfo=OLD), adapters=False)
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    apply_precision(m, resolve("fp32", device="cpu"), adapters=False)
    assert {p.dtype for p in m.parameters()} == {torch.float32}
