"""Training options of the loader (tandem.models.load / lora): attn_implementation, gradient checkpointing with
LoRA (same gradients, less stored activations), QLoRA config construction and its one-line refusal without CUDA."""

from __future__ import annotations

import pytest
import torch

from tandem.models.load import ModelOptionError, check_model_options, load_policy, load_reward_model, quantization_config
from tandem.models.lora import apply_lora, prepare_for_training

IDS = torch.tensor([[1, 5, 9, 20, 7, 11, 3, 8]])


def test_attn_implementation_is_passed_to_from_pretrained(tiny_model_dir):
    for impl in ("eager", "sdpa"):
        model, _ = load_policy(str(tiny_model_dir), dtype="float32", attn_implementation=impl)
        assert model.config._attn_implementation == impl
    reward, _ = load_reward_model(str(tiny_model_dir), dtype="float32", attn_implementation="eager")
    assert reward.config._attn_implementation == "eager"


def _lora_grads(model_dir, checkpointing: bool) -> dict[str, torch.Tensor]:
    model, _ = load_policy(str(model_dir), dtype="float32", attn_implementation="eager")
    model = prepare_for_training(model, gradient_checkpointing=checkpointing, lora=True)
    torch.manual_seed(0)
    model = apply_lora(model, r=4, alpha=8)
    for n, p in model.named_parameters():  # LoRA B starts at zero: give it values so A gets a gradient too
        if "lora_B" in n:
            p.data.normal_(0, 0.1)
    model.train()
    model(input_ids=IDS, labels=IDS).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_gradient_checkpointing_with_lora_gives_the_same_gradients(tiny_model_dir):
    plain = _lora_grads(tiny_model_dir, checkpointing=False)
    ckpt = _lora_grads(tiny_model_dir, checkpointing=True)
    assert plain.keys() == ckpt.keys() and len(plain) > 0
    for n in plain:
        assert ckpt[n] is not None and torch.allclose(plain[n], ckpt[n], atol=1e-6), n
    assert any(g.abs().sum() > 0 for n, g in ckpt.items() if "lora_A" in n)  # gradients flow through checkpoints


def test_prepare_for_training_switches_checkpointing_on_without_reentrant(tiny_model_dir):
    model, _ = load_policy(str(tiny_model_dir), dtype="float32")
    assert not model.is_gradient_checkpointing
    model = prepare_for_training(model, gradient_checkpointing=True, lora=True)
    assert model.is_gradient_checkpointing and model.config.use_cache is False
    assert model.model.layers[0].gradient_checkpointing
    assert model.model._gradient_checkpointing_func.keywords == {"use_reentrant": False}
    untouched, _ = load_policy(str(tiny_model_dir), dtype="float32")
    assert prepare_for_training(untouched) is untouched and not untouched.is_gradient_checkpointing


def test_quantization_config_is_qlora_nf4_without_loading_anything():
    q4 = quantization_config("4bit", dtype="bfloat16")
    assert q4.load_in_4bit and not q4.load_in_8bit
    assert (q4.bnb_4bit_quant_type, q4.bnb_4bit_use_double_quant, q4.bnb_4bit_compute_dtype) == ("nf4", True, torch.bfloat16)
    assert quantization_config("4bit", dtype="float16").bnb_4bit_compute_dtype == torch.float16
    assert quantization_config("4bit", dtype="float32").bnb_4bit_compute_dtype in (torch.bfloat16, torch.float16)
    q8 = quantization_config("8bit")
    assert q8.load_in_8bit and not q8.load_in_4bit
    with pytest.raises(ModelOptionError, match="choose 4bit, 8bit or null"):
        quantization_config("2bit")


@pytest.mark.parametrize("q", ["4bit", "8bit"])
def test_quantization_without_cuda_is_one_clear_line(q):
    with pytest.raises(ModelOptionError) as e:
        check_model_options(quantization=q, cuda=False)
    msg = str(e.value)
    assert msg.startswith(f"model.quantization: {q}") and "CUDA" in msg and "remove model.quantization" in msg
    assert "\n" not in msg and isinstance(e.value, ValueError)


def test_flash_attention_without_cuda_is_refused_and_the_rest_passes():
    with pytest.raises(ModelOptionError, match=r"model\.attn_implementation: flash_attention_2 needs a CUDA GPU"):
        check_model_options(attn_implementation="flash_attention_2", cuda=False)
    check_model_options(attn_implementation="sdpa", cuda=False)
    check_model_options(cuda=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_quantization_on_this_cpu_machine_is_refused_by_default():
    with pytest.raises(ModelOptionError, match="needs a CUDA GPU"):
        check_model_options(quantization="4bit")


def test_pretrained_options_carry_the_quantization_config_and_device_map():
    from tandem.models.load import pretrained_options

    assert pretrained_options("float32", None, None, None) == {}
    kw = pretrained_options("bfloat16", "sdpa", "4bit", "cuda:1")
    assert kw["attn_implementation"] == "sdpa" and kw["device_map"] == {"": "cuda:1"}
    assert kw["quantization_config"].load_in_4bit and kw["quantization_config"].bnb_4bit_compute_dtype == torch.bfloat16
