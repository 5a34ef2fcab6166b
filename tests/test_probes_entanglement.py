"""Entanglement probe: inner products against flattened autograd gradients, the first-order conditions at their
thresholds, per-token cosines, the training-time hook and the plots."""

from __future__ import annotations

import pytest
import torch
from helpers_objectives import IGNORE, pref_feature, tiny_llama

from tandem.data import collate
from tandem.probes import ProbeHook, conditions, entanglement_stats, select_params, summarize
from tandem.probes.entanglement import chunks
from tandem.probes.plots import plot_entanglement_hist
from tandem.probes.tokens import plot_token_heatmap, token_cosines


def batch_fn(feats):
    return collate(feats, mode="pack", pad_id=0)


PAIRS = [
    pref_feature([1, 2, 3, 4], [5, 6, 7, 8, 9], [5, 6, 11, 8, 9, 12]),
    pref_feature([3, 1, 4], [20, 21, 22], [20, 30, 22, 23]),
]


def direct_seq_logp(model, ids, labels):
    """Summed log-prob of the labelled tokens from the model's full logits (independent of tandem's code)."""
    logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()
    lp = torch.log_softmax(logits[:-1], dim=-1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    return lp[torch.tensor(labels[1:]) != IGNORE].sum()


def flat_grad(model, ids, labels, params):
    g = torch.autograd.grad(direct_seq_logp(model, ids, labels), params, allow_unused=True)
    return torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1) for x, p in zip(g, params)]).double()


def reference_rows(model, feats, params):
    named = select_params(model, params)
    ps = [p for _, p in named]
    flags = [p.requires_grad for p in ps]
    for p in ps:
        p.requires_grad_(True)
    model.eval()
    out = []
    for f in feats:
        gw = flat_grad(model, f["chosen_input_ids"], f["chosen_labels"], ps)
        gl = flat_grad(model, f["rejected_input_ids"], f["rejected_labels"], ps)
        out.append((float(gw @ gl), float(gw.norm()), float(gl.norm())))
    for p, fl in zip(ps, flags):
        p.requires_grad_(fl)
    model.train()
    return out


def check_against_flat(model, params, **kw):
    was = model.training
    rows = entanglement_stats(model, PAIRS, batch_fn, params=params, **kw)
    assert model.training == was
    for row, (dot, nw, nl) in zip(rows, reference_rows(model, PAIRS, params)):
        assert row["dot"] == pytest.approx(dot, rel=1e-4, abs=1e-6)
        assert row["norm_w"] == pytest.approx(nw, rel=1e-5)
        assert row["norm_l"] == pytest.approx(nl, rel=1e-5)
        assert row["cosine"] == pytest.approx(dot / (nw * nl), rel=1e-4, abs=1e-6)
    return rows


def test_inner_products_match_flattened_gradients_all_and_regex():
    model = tiny_llama(0)
    rows = check_against_flat(model, "all")
    assert rows[0]["dot"] != 0 and 0 < abs(rows[0]["cosine"]) < 1
    # chunking (many small chunks) gives the same numbers
    chunked = entanglement_stats(model, PAIRS, batch_fn, params="all", chunk_numel=3000)
    for a, b in zip(rows, chunked):
        assert a["dot"] == pytest.approx(b["dot"], rel=1e-6)
    sub = check_against_flat(model, r"layers\.1\.mlp\.")
    assert abs(sub[0]["norm_w"]) < abs(rows[0]["norm_w"])  # a strict subset of the parameters
    # log-probs in the rows are the summed response log-probs
    f = PAIRS[0]
    with torch.no_grad():
        assert rows[0]["logp_w"] == pytest.approx(float(direct_seq_logp(model, f["chosen_input_ids"], f["chosen_labels"])), abs=1e-4)
    assert rows[0]["n_tokens_w"] == 5 and rows[0]["n_tokens_l"] == 6


def test_inner_products_on_lora_params_and_flags_restored():
    from tandem.models import apply_lora

    model = apply_lora(tiny_llama(1), r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)  # B starts at zero; make both A and B gradients non-zero
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.train()
    rows = check_against_flat(model, "lora")
    assert all(r["norm_w"] > 0 for r in rows)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert {n for n, _ in select_params(model, "lora")} == {n for n in flags if "lora_" in n}


def test_select_params_errors_name_the_selection():
    with pytest.raises(ValueError, match="no LoRA adapter"):
        select_params(tiny_llama(0), "lora")
    with pytest.raises(ValueError, match="selects no parameter"):
        select_params(tiny_llama(0), "nothing_matches_this")
    with pytest.raises(ValueError, match="regular expression"):
        select_params(tiny_llama(0), "(")


def test_chunks_respect_the_budget():
    ts = [torch.zeros(n) for n in (3, 4, 10, 1, 1)]
    assert [[t.numel() for t in c] for c in chunks(ts, 7)] == [[3, 4], [10], [1, 1]]


def test_conditions_flip_exactly_at_the_threshold():
    # chosen falls iff dot > ratio * norm_w^2; rejected rises iff dot > norm_l^2 / ratio
    assert conditions(4.0, 2.0, 3.0) == (False, False)  # dot == ||g_w||^2: not strictly greater
    assert conditions(4.0 + 1e-9, 2.0, 3.0) == (True, False)
    assert conditions(9.0, 2.0, 3.0) == (True, False)  # dot == ||g_l||^2
    assert conditions(9.0 + 1e-9, 2.0, 3.0) == (True, True)
    # the rejected condition uses ||g_l||^2 (not ||g_w||^2): here dot > ||g_w||^2 but < ||g_l||^2
    assert conditions(5.0, 2.0, 3.0)[1] is False
    # ratio = d_w / d_l = 2: thresholds 2 * 4 = 8 and 9 / 2 = 4.5
    assert conditions(4.6, 2.0, 3.0, ratio=2.0) == (False, True)
    assert conditions(8.0, 2.0, 3.0, ratio=2.0) == (False, True)
    assert conditions(8.01, 2.0, 3.0, ratio=2.0) == (True, True)
    with pytest.raises(ValueError, match="ratio"):
        conditions(1.0, 1.0, 1.0, ratio=0.0)


def test_summarize_by_hand():
    rows = [
        {"dot": 5.0, "norm_w": 2.0, "norm_l": 3.0, "cosine": 5 / 6, "chosen_falls": True, "rejected_rises": False,
         "logp_w": -1.0, "logp_l": -2.0},
        {"dot": -1.0, "norm_w": 1.0, "norm_l": 1.0, "cosine": -1.0, "chosen_falls": False, "rejected_rises": False,
         "logp_w": -3.0, "logp_l": -4.0},
        {"dot": 0.0, "norm_w": 1.0, "norm_l": 1.0, "cosine": 0.0, "chosen_falls": False, "rejected_rises": False,
         "logp_w": -2.0, "logp_l": -6.0},
    ]
    s = summarize(rows)
    assert s["pairs"] == 3
    assert s["mean_dot"] == pytest.approx(4 / 3)
    assert s["median_cosine"] == 0.0
    assert s["mean_cosine"] == pytest.approx((5 / 6 - 1) / 3)
    assert s["frac_chosen_falls"] == pytest.approx(1 / 3) and s["frac_rejected_rises"] == 0.0
    assert s["mean_logp_w"] == -2.0 and s["mean_logp_l"] == -4.0


def test_token_cosines_match_direct_per_token_gradients():
    model = tiny_llama(0)
    f = PAIRS[0]
    res = token_cosines(model, f, batch_fn, params=r"layers\.0\.", max_tokens=4)
    ps = [p for _, p in select_params(model, r"layers\.0\.")]

    def tok_grads(ids, labels):
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()
        lp = torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
        lp = lp[torch.tensor(labels[1:]) != IGNORE][:4]
        return torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(x, ps, retain_graph=True)])
                            for x in lp]).double()

    gw = tok_grads(f["chosen_input_ids"], f["chosen_labels"])
    gl = tok_grads(f["rejected_input_ids"], f["rejected_labels"])
    expected = (gw @ gl.T) / (gw.norm(dim=1)[:, None] * gl.norm(dim=1)[None, :])
    assert res["cosine"].shape == (4, 4)
    assert torch.allclose(res["cosine"], expected, atol=1e-5)
    # the shared first two tokens (same prefix, same context) have identical gradients
    assert res["cosine"][0, 0] == pytest.approx(1.0, abs=1e-5) and res["cosine"][1, 1] == pytest.approx(1.0, abs=1e-5)
    assert res["chosen_ids"] == [5, 6, 7, 8] and res["rejected_ids"] == [5, 6, 11, 8]
    # a tiny memory budget (one tensor per chunk) gives the same matrix
    small = token_cosines(model, f, batch_fn, params=r"layers\.0\.", max_tokens=4, max_bytes=1)
    assert torch.allclose(small["cosine"], res["cosine"], atol=1e-6)


def test_probe_hook_leaves_grads_weights_and_mode_alone():
    model = tiny_llama(0)
    model.train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    hook = ProbeHook([{**f, "ref_chosen_logp": 0.0} for f in PAIRS], batch_fn, every=3, pairs=2, params="all")
    assert hook(model, 1) is None and hook(model, 2) is None
    out = hook(model, 3)
    assert out is not None and all(k.startswith("probe/") for k in out)
    s = summarize(entanglement_stats(model, PAIRS, batch_fn))
    assert out["probe/mean_cosine"] == pytest.approx(s["mean_cosine"])
    assert out["probe/frac_chosen_falls"] == s["frac_chosen_falls"]
    assert out["probe/logp_w"] == pytest.approx(s["mean_logp_w"])
    assert hook(model, 6) is not None and hook(model, 7) is None
    assert model.training
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, torch.full_like(p, 0.5)), n
        assert torch.equal(p.detach(), weights[n]), n
    assert ProbeHook(PAIRS, batch_fn, every=0)(model, 0) is None


def test_plots_write_pngs(tmp_path):
    model = tiny_llama(0)
    rows = entanglement_stats(model, PAIRS, batch_fn)
    png = plot_entanglement_hist(rows, tmp_path / "h.png")
    assert png.stat().st_size > 1000
    res = token_cosines(model, PAIRS[1], batch_fn, max_tokens=3)
    heat = plot_token_heatmap(res, None, tmp_path / "t.png", title="pair 1")
    assert heat.stat().st_size > 1000
