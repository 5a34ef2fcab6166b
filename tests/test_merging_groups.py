import pytest
from helpers_merging import tiny_gpt2, tiny_llama

from tandem.merging.groups import (
    GroupSpecError,
    describe_groups,
    find_blocks,
    group_of,
    parse_group_spec,
    tensor_alphas,
    tied_names,
)
from tandem.merging.lerp import merge_names


def llama_names(n):
    names = ["model.embed_tokens.weight"]
    for i in range(n):
        names += [f"model.layers.{i}.self_attn.q_proj.weight", f"model.layers.{i}.mlp.up_proj.weight"]
    return names + ["model.norm.weight", "lm_head.weight"]


def gpt2_names(n):
    names = ["transformer.wte.weight", "transformer.wpe.weight"]
    for i in range(n):
        names += [f"transformer.h.{i}.attn.c_attn.weight", f"transformer.h.{i}.ln_1.bias"]
    return names + ["transformer.ln_f.weight", "transformer.ln_f.bias"]


def test_find_blocks_styles():
    assert find_blocks(llama_names(30)) == ("model.layers", 30)
    assert find_blocks(gpt2_names(12)) == ("transformer.h", 12)
    # "other" style: no known list name; the prefix with the most indices wins
    names = ["enc.emb.weight"] + [f"enc.stack.{i}.w" for i in range(4)] + [f"enc.heads.{i}.w" for i in range(2)]
    assert find_blocks(names) == ("enc.stack", 4)
    with pytest.raises(GroupSpecError, match="no transformer block list"):
        find_blocks(["a.weight", "b.bias"])


def test_find_blocks_real_models():
    assert find_blocks(merge_names(tiny_llama(layers=3))) == ("model.layers", 3)
    assert find_blocks(merge_names(tiny_gpt2())) == ("transformer.h", 3)


def test_block_specs():
    assert parse_group_spec("block3", 6) == [[0, 1], [2, 3], [4, 5]]
    # remainder spread one extra layer over the first groups
    assert parse_group_spec("block3", 7) == [[0, 1, 2], [3, 4], [5, 6]]
    assert parse_group_spec("block3", 8) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert parse_group_spec("block3", 30) == [list(range(0, 10)), list(range(10, 20)), list(range(20, 30))]
    assert parse_group_spec("layerwise", 3) == [[0], [1], [2]]
    assert parse_group_spec("0-1, 2 ,3-5", 6) == [[0, 1], [2], [3, 4, 5]]
    with pytest.raises(GroupSpecError, match="K <= 2"):
        parse_group_spec("block3", 2)
    with pytest.raises(GroupSpecError, match="in none: \\[5\\]"):
        parse_group_spec("0-2,3-4", 6)
    with pytest.raises(GroupSpecError, match="in several: \\[2\\]"):
        parse_group_spec("0-2,2-5", 6)
    with pytest.raises(GroupSpecError, match="not inside"):
        parse_group_spec("0-9", 6)
    with pytest.raises(GroupSpecError, match="cannot read"):
        parse_group_spec("thirds", 6)


def test_group_assignment_llama_and_gpt2():
    g, n = group_of(llama_names(6), "block3")
    assert n == 3
    assert [g[f"model.layers.{i}.mlp.up_proj.weight"] for i in range(6)] == [0, 0, 1, 1, 2, 2]
    assert g["model.embed_tokens.weight"] == 0 and g["model.norm.weight"] is None and g["lm_head.weight"] is None
    g, n = group_of(gpt2_names(6), "block3")
    assert [g[f"transformer.h.{i}.ln_1.bias"] for i in range(6)] == [0, 0, 1, 1, 2, 2]
    assert g["transformer.wte.weight"] == 0 and g["transformer.wpe.weight"] == 0
    assert g["transformer.ln_f.bias"] is None
    assert describe_groups(gpt2_names(7), "block3") == ["0-2", "3-4", "5-6"]


def test_tensor_alphas_embeddings_and_head():
    names = llama_names(6)
    a = tensor_alphas(names, "block3", [0.1, 0.4, 0.7])
    assert a["model.embed_tokens.weight"] == 0.1
    assert a["model.layers.3.self_attn.q_proj.weight"] == 0.4
    assert a["model.layers.5.self_attn.q_proj.weight"] == 0.7
    assert a["model.norm.weight"] == pytest.approx(0.4)  # mean of group alphas
    assert a["lm_head.weight"] == pytest.approx(0.4)
    a = tensor_alphas(names, "block3", [0.1, 0.4, 0.7], head_alpha=0.9)
    assert a["lm_head.weight"] == 0.9 and a["model.norm.weight"] == 0.9
    with pytest.raises(GroupSpecError, match="makes 3 groups but 2 alphas"):
        tensor_alphas(names, "block3", [0.1, 0.2])


def test_tied_weights_once():
    m = tiny_llama(tied=True)
    names = merge_names(m)
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    assert tied_names(m) == {"lm_head.weight": "model.embed_tokens.weight"}
    a = tensor_alphas(names, "block3", [0.2, 0.5, 0.8], head_alpha=0.9)
    assert a["model.embed_tokens.weight"] == 0.2  # the tied head follows the embedding
    g = tiny_gpt2()
    assert "lm_head.weight" not in merge_names(g)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_tensor_alphas_refuse_non_finite_alphas_naming_the_value(bad):
    names = llama_names(6)
    with pytest.raises(ValueError, match=f"alphas: must be a finite number, got {bad!r}"):
        tensor_alphas(names, "block3", [0.1, bad, 0.7])
    with pytest.raises(ValueError, match=f"head_alpha: must be a finite number, got {bad!r}"):
        tensor_alphas(names, "block3", [0.1, 0.4, 0.7], head_alpha=bad)


def test_tensor_alphas_name_the_group_and_a_non_number():
    with pytest.raises(ValueError, match=r"got nan \(group 1\)"):
        tensor_alphas(llama_names(6), "block3", [0.1, float("nan"), 0.7])
    with pytest.raises(ValueError, match="alphas: 'abc' is not a number"):
        tensor_alphas(llama_names(6), "block3", [0.1, "abc", 0.7])
