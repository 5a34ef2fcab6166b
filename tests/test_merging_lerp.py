import pytest
import torch
from helpers_merging import hand_lerp, perturbed, tiny_gpt2, tiny_llama

from tandem.merging.groups import tensor_alphas
from tandem.merging.lerp import Merger, merge_names


def pair(kind, **kw):
    m0 = tiny_llama(**kw) if kind == "llama" else tiny_gpt2()
    return m0, perturbed(m0, seed=1)


def states(m0, m1):
    return ({n: p.detach().clone() for n, p in m0.named_parameters()},
            {n: p.detach().clone() for n, p in m1.named_parameters()})


def test_lerp_hand_values():
    t0 = {"a": torch.tensor([0.0, 2.0, -4.0])}
    t1 = {"a": torch.tensor([1.0, 4.0, 4.0])}
    model = torch.nn.Module()
    model.a = torch.nn.Parameter(torch.zeros(3))
    Merger(t0, t1).merge_into(model, 0.25)
    # (1 - 0.25) * t0 + 0.25 * t1
    assert model.a.tolist() == [0.25, 2.5, -2.0]
    Merger(t0, t1).merge_into(model, 1.0)
    assert model.a.tolist() == [1.0, 4.0, 4.0]
    Merger(t0, t1).merge_into(model, 0.0)
    assert model.a.tolist() == [0.0, 2.0, -4.0]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_global_merge_matches_hand_lerp(kind):
    m0, m1 = pair(kind)
    s0, s1 = states(m0, m1)
    merger = Merger.from_models(m0, m1)
    live = m1  # merge into the tuned model object itself: the merger holds its own copies
    for a in (0.0, 0.3, 1.0):
        merger.merge_into(live, a)
        for n, p in live.named_parameters():
            torch.testing.assert_close(p.detach(), hand_lerp(s0[n], s1[n], a), rtol=0, atol=1e-6)
    assert torch.equal(dict(live.named_parameters())[merge_names(live)[0]], s1[merge_names(live)[0]])


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_group_merge_matches_hand_lerp(kind):
    m0, m1 = pair(kind)
    s0, s1 = states(m0, m1)
    names = merge_names(m1)
    alphas = tensor_alphas(names, "layerwise", [0.1, 0.5, 0.9], head_alpha=0.7)
    Merger(s0, s1, names=names).merge_into(m1, alphas)
    prefix = "model.layers" if kind == "llama" else "transformer.h"
    emb = "model.embed_tokens.weight" if kind == "llama" else "transformer.wte.weight"
    expected_alpha = {f"{prefix}.{i}.": a for i, a in enumerate([0.1, 0.5, 0.9])}
    for n, p in m1.named_parameters():
        a = next((v for k, v in expected_alpha.items() if n.startswith(k)), None)
        if a is None:
            a = 0.1 if n == emb or n == "transformer.wpe.weight" else 0.7
        assert alphas[n] == a, n
        torch.testing.assert_close(p.detach(), hand_lerp(s0[n], s1[n], a), rtol=0, atol=1e-6)


def test_merged_state_dict_and_bf16_and_dtype_cast():
    m0, m1 = pair("llama")
    s0, s1 = states(m0, m1)
    sd = Merger(s0, s1).merged_state_dict(0.5)
    for n in s0:
        torch.testing.assert_close(sd[n], hand_lerp(s0[n], s1[n], 0.5), rtol=0, atol=1e-6)
    # bf16 copies merged into an fp32 model: slow path casts
    mb = Merger(s0, s1, dtype=torch.bfloat16)
    mb.merge_into(m1, 0.5)
    n = "model.layers.0.mlp.up_proj.weight"
    exp = torch.lerp(s0[n].bfloat16(), s1[n].bfloat16(), 0.5).float()
    assert torch.equal(dict(m1.named_parameters())[n].detach(), exp)
    assert mb.nbytes == sum(p.numel() for p in m1.parameters()) * 2


def test_errors_are_clear():
    m0, m1 = pair("llama")
    s0, s1 = states(m0, m1)
    with pytest.raises(KeyError, match="theta0 lacks"):
        Merger({k: v for k, v in s0.items() if "norm" not in k}, s1)
    bad = dict(s1)
    bad["model.norm.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="differ in shape"):
        Merger(s0, bad)
    with pytest.raises(KeyError, match="no value for"):
        Merger(s0, s1).merge_into(m1, {"model.norm.weight": 0.5})
    with pytest.raises(ValueError, match="dtypes"):
        Merger(s0, {k: v.double() for k, v in s1.items()})


def test_non_finite_alphas_are_refused_before_any_weight_changes():
    m0, m1 = pair("llama")
    s0, s1 = states(m0, m1)
    before = {k: v.clone() for k, v in m1.state_dict().items()}
    mg = Merger(s0, s1)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=f"alpha: must be a finite number, got {bad!r}"):
            mg.merge_into(m1, bad)
        with pytest.raises(ValueError, match=f"got {bad!r}"):
            mg.merged_state_dict(bad)
    per_tensor = {n: 0.5 for n in mg.names}
    per_tensor["model.norm.weight"] = float("nan")
    with pytest.raises(ValueError, match=r"alpha of model\.norm\.weight: must be a finite number, got nan"):
        mg.merge_into(m1, per_tensor)
    assert all(torch.equal(before[k], v) for k, v in m1.state_dict().items())
