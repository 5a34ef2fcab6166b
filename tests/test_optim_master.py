"""fp32 master weights for bf16 training (tandem.optim.MasterAdamW): it tracks an fp32 run, an update below bf16's
resolution is not lost, fp32 parameters are their own masters, and the state round-trips (masters included)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tandem.optim import MasterAdamW, adamw

LOSS_TOL = 0.01  # bf16 compute + fp32 masters vs fp32: relative difference of the loss at every one of 20 steps


def tiny_lm(dtype):
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    torch.manual_seed(0)
    m = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.data = p.data.to(dtype)
    return m


def curve(dtype, steps=20, lr=3e-3):
    torch.manual_seed(1)
    data = torch.randint(0, 128, (8, 32))
    data[:, 1::2] = (data[:, ::2] * 7 + 3) % 128  # a learnable pattern: odd tokens follow from even ones
    model = tiny_lm(dtype)
    opt = adamw(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=data, labels=data).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses, opt


def test_bf16_with_master_weights_tracks_fp32():
    ref, opt32 = curve(torch.float32)
    got, opt16 = curve(torch.bfloat16)
    assert type(opt32) is torch.optim.AdamW and type(opt16) is MasterAdamW
    assert ref[-1] < 0.8 * ref[0]  # it learns
    rel = [abs(a - b) / a for a, b in zip(ref, got)]
    assert max(rel) < LOSS_TOL, rel


def sub_resolution_run(opt_fn, steps=100):
    """``steps`` AdamW steps of lr 1e-6 on loss = sum(w) (so each step moves every weight by exactly 1e-6) for bf16
    weights in [0.02, 0.03), where bf16's spacing is 2**-13 = 1.2e-4: one step is 1/120 of it."""
    w0 = (0.02 + 0.01 * torch.rand(256, generator=torch.Generator().manual_seed(0))).to(torch.bfloat16)
    w = torch.nn.Parameter(w0.clone())
    opt = opt_fn([w])
    for _ in range(steps):
        w.sum().float().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return w0, w.detach(), opt


def test_lr_1e6_still_moves_bf16_weights():
    w0, w, opt = sub_resolution_run(lambda ps: adamw(ps, lr=1e-6))
    master = opt._masters[0]
    assert torch.allclose(w0.float() - master, torch.full_like(master, 1e-4), rtol=0, atol=2e-6)  # 100 x 1e-6
    assert (w != w0).all()  # every weight moved one bf16 step down
    assert torch.equal(w, master.to(torch.bfloat16))
    # a pure-bf16 AdamW rounds each 1e-6 update away: not one weight moves
    p0, p, _ = sub_resolution_run(lambda ps: torch.optim.AdamW(ps, lr=1e-6, weight_decay=0.0, foreach=True))
    assert torch.equal(p, p0)


def test_fp32_params_are_their_own_masters_and_none_grads_are_skipped():
    a = torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16))
    b = torch.nn.Parameter(torch.ones(2))
    opt = MasterAdamW([a, b], lr=0.1)
    assert opt.param_groups[0]["params"][1] is b and len(opt._masters) == 1
    b.sum().backward()  # a has no gradient this step
    opt.step()
    assert torch.equal(a.detach(), torch.ones(3, dtype=torch.bfloat16)) and (b < 1).all()
    opt.zero_grad()
    assert a.grad is None and b.grad is None


def test_state_dict_round_trip_keeps_the_masters():
    _, w, opt = sub_resolution_run(lambda ps: adamw(ps, lr=1e-6), steps=10)
    sd = opt.state_dict()
    other = MasterAdamW([torch.nn.Parameter(w.clone())], lr=1e-6)
    other.load_state_dict(sd)
    assert torch.equal(other._masters[0], opt._masters[0])  # not the bf16 rounding of the weights
    assert not torch.equal(other._masters[0], w.float())
    assert torch.equal(other.state[other._masters[0]]["exp_avg"], opt.state[opt._masters[0]]["exp_avg"])
    plain = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(256))], lr=1e-6)
    third = MasterAdamW([torch.nn.Parameter(w.clone())], lr=1e-6)
    third.load_state_dict(plain.state_dict())  # no masters stored: start from the weights
    assert torch.equal(third._masters[0], w.float())


def test_scheduler_drives_the_master_learning_rate():
    from transformers import get_scheduler

    opt = adamw([torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))], lr=1.0)
    sched = get_scheduler("linear", opt, num_warmup_steps=0, num_training_steps=4)
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.75
