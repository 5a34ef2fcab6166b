"""With a LoRA-wrapped tiny Llama only the adapter tensors are tracked and penalised."""

from __future__ import annotations

import pytest
import torch
from helpers_regularizers import grads, stages, weights, zero_grads

from tandem.regularizers import NO_DATA, Freeze, ModifiedEWC

peft = pytest.importorskip("peft")
IFA1, HPA1 = stages("ifa", "hpa")


@pytest.fixture()
def lora_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    base = LlamaForCausalLM(cfg)
    lcfg = peft.LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    return peft.get_peft_model(base, lcfg)


def train_step(model, seed, reg=None):
    """One SGD step; ``reg.grad_term`` runs between backward and the step, as in the engine."""
    torch.manual_seed(seed)
    ids = torch.randint(0, 64, (2, 8))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    if reg is not None:
        reg.grad_term(model)
    opt.step()
    opt.zero_grad(set_to_none=True)


def test_only_adapters_are_tracked_and_penalised(lora_model):
    model, lam = lora_model, 50.0
    reg = ModifiedEWC(lam=lam, normalise="zscore")
    reg.before_stage(model, IFA1)
    train_step(model, 1)
    train_step(model, 2)
    reg.after_stage(model, IFA1, NO_DATA)
    anchor = weights(model)  # the adapters at the end of IFA-1
    names = list(reg.report()["tensors"])
    assert len(names) == 2 * 2 * 2 and all("lora_A" in n or "lora_B" in n for n in names)
    assert set(names) == set(anchor)

    reg.before_stage(model, HPA1)
    train_step(model, 3)
    f = reg.tracker.importance("ifa")
    assert sum(f.values()) == pytest.approx(1.0) and len(set(round(v, 12) for v in f.values())) > 1

    zero_grads(model)
    params = dict(model.named_parameters())
    pen = lam / 2 * sum(f[n] * ((params[n] - anchor[n]) ** 2).sum() for n in f)
    pen.backward()
    ref = grads(model)
    zero_grads(model)
    reg.grad_term(model)
    got = grads(model)
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(got[n], ref[n])
        else:
            assert got[n] is None  # frozen base weights get no gradient
    assert reg.last_penalty == pytest.approx(float(pen.detach()), rel=1e-5) and reg.last_penalty > 0


def test_freeze_on_adapters(lora_model):
    model = lora_model
    reg = Freeze(percent=25)
    reg.before_stage(model, IFA1)
    train_step(model, 1)
    train_step(model, 2)
    reg.after_stage(model, IFA1, NO_DATA)
    reg.before_stage(model, HPA1)
    assert len(reg.frozen) == 2 and all("lora_" in n for n in reg.frozen)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n in reg.frozen}
    train_step(model, 3, reg)
    assert all(torch.equal(dict(model.named_parameters())[n].detach(), w) for n, w in frozen.items())
    reg.after_stage(model, HPA1, NO_DATA)
    assert all(dict(model.named_parameters())[n].requires_grad for n in frozen)
