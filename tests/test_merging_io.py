import json

import pytest
import torch
import yaml
from helpers_merging import hand_lerp, perturbed, save, tiny_gpt2, tiny_llama
from typer.testing import CliRunner

from tandem.cli.merge_cmd import app
from tandem.merging.groups import tensor_alphas
from tandem.merging.lerp import Merger, merge_names
from tandem.models import load_full_weights
from tandem.merging.mergekit import mergekit_config, write_mergekit_config


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("merge-llama")
    m0 = tiny_llama(0, layers=6)
    m1 = perturbed(m0, seed=2)
    return save(m0, d / "base"), save(m1, d / "tuned"), m0, m1


def _states(*models):
    return [{n: p.detach().clone() for n, p in m.named_parameters()} for m in models]


def test_cli_merge_saves_loadable_model_equal_to_in_memory(llama_pair, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, tuned, m0, m1 = llama_pair
    out = tmp_path / "merged"
    yml = tmp_path / "merge.yaml"
    r = CliRunner().invoke(app, [str(base), str(tuned), "--alphas", "0.2,0.5,0.8", "--head-alpha", "0.9",
                                 "-o", str(out), "--mergekit-config", str(yml)])
    assert r.exit_code == 0, r.output
    loaded = AutoModelForCausalLM.from_pretrained(out)
    s0, s1 = _states(m0, m1)
    names = merge_names(m1)
    expect = Merger(s0, s1).merged_state_dict(tensor_alphas(names, "block3", [0.2, 0.5, 0.8], head_alpha=0.9))
    got = dict(loaded.named_parameters())
    for n in names:
        assert torch.equal(got[n].detach(), expect[n]), n
    n = "model.layers.4.mlp.down_proj.weight"
    torch.testing.assert_close(got[n].detach(), hand_lerp(s0[n], s1[n], 0.8), rtol=0, atol=1e-6)
    torch.testing.assert_close(got["lm_head.weight"].detach(), hand_lerp(s0["lm_head.weight"], s1["lm_head.weight"], 0.9),
                               rtol=0, atol=1e-6)
    assert AutoTokenizer.from_pretrained(out)("w1 w2")["input_ids"] == [5, 6]
    rec = json.loads((out / "tandem_merge.json").read_text())
    assert rec["groups"] == ["0-1", "2-3", "4-5"] and rec["alphas"] == [0.2, 0.5, 0.8] and rec["head_alpha"] == 0.9
    assert yaml.safe_load(yml.read_text())["merge_method"] == "linear"

    # refuses a non-empty out dir, replaces it with --overwrite
    r = CliRunner().invoke(app, [str(base), str(tuned), "--alpha", "0.5", "-o", str(out)])
    assert r.exit_code == 2 and "--overwrite" in r.output
    r = CliRunner().invoke(app, [str(base), str(tuned), "--alpha", "1.0", "-o", str(out), "--overwrite"])
    assert r.exit_code == 0, r.output
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert all(torch.equal(p.detach(), s1[n]) for n, p in loaded.named_parameters())


def test_cli_errors(llama_pair, tmp_path):
    base, tuned, _, _ = llama_pair
    r = CliRunner().invoke(app, [str(base), str(tuned), "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "exactly one of --alpha" in r.output
    r = CliRunner().invoke(app, [str(base), str(tuned), "--alphas", "0.1,0.2", "-o", str(tmp_path / "y")])
    assert r.exit_code == 2 and "3 groups but 2 alphas" in r.output
    r = CliRunner().invoke(app, ["--help"])
    assert "tandem merge" in r.output and "--alphas" in r.output


def test_cli_merge_gpt2_tied(tmp_path):
    from transformers import AutoModelForCausalLM

    g0 = tiny_gpt2(0)
    g1 = perturbed(g0, seed=3)
    save(g0, tmp_path / "b", tokenizer=False)
    save(g1, tmp_path / "t", tokenizer=False)
    r = CliRunner().invoke(app, [str(tmp_path / "b"), str(tmp_path / "t"), "--alphas", "0.1,0.6,0.9",
                                 "--groups", "layerwise", "-o", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    s0, s1 = _states(g0, g1)
    p = dict(loaded.named_parameters())
    torch.testing.assert_close(p["transformer.wte.weight"].detach(), hand_lerp(s0["transformer.wte.weight"],
                               s1["transformer.wte.weight"], 0.1), rtol=0, atol=1e-6)
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()
    torch.testing.assert_close(p["transformer.h.1.attn.c_attn.weight"].detach(),
                               hand_lerp(s0["transformer.h.1.attn.c_attn.weight"],
                                         s1["transformer.h.1.attn.c_attn.weight"], 0.6), rtol=0, atol=1e-6)


def test_load_full_weights_lora_adapter(llama_pair, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    base, _, m0, _ = llama_pair
    peft_model = get_peft_model(tiny_llama(0, layers=6), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    peft_model.save_pretrained(tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base)
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(cfg))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()

    got = load_full_weights(tmp_path / "adapter")
    from transformers import AutoModelForCausalLM

    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / "adapter").merge_and_unload()
    gp, rp = dict(got.named_parameters()), dict(ref.named_parameters())
    assert set(gp) == set(rp)
    for n in rp:
        assert torch.equal(gp[n], rp[n]), n
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(gp[q], dict(m0.named_parameters())[q])  # the adapter did change the weights
    # the adapter dir works as `tuned` in the CLI
    r = CliRunner().invoke(app, [str(base), str(tmp_path / "adapter"), "--alpha", "0.5", "-o", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    merged = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "m").named_parameters())
    torch.testing.assert_close(merged[q].detach(), hand_lerp(dict(m0.named_parameters())[q].detach(), rp[q].detach(), 0.5),
                               rtol=0, atol=1e-6)


def test_load_full_weights_refuses_non_safetensors(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_full_weights(tmp_path)


def test_mergekit_config_values():
    m = tiny_llama(0, layers=6)
    names = merge_names(m)
    cfg = mergekit_config("b", "t", names, "block3", [0.2, 0.5, 0.8], head_alpha=0.9)
    assert cfg["merge_method"] == "linear" and cfg["parameters"] == {"normalize": False}
    base_w, tuned_w = cfg["models"][0]["parameters"]["weight"], cfg["models"][1]["parameters"]["weight"]
    assert cfg["models"][0]["model"] == "b" and cfg["models"][1]["model"] == "t"
    assert {"filter": "model.layers.3.", "value": 0.5} in tuned_w
    assert {"filter": "model.layers.3.", "value": 0.5} in base_w
    assert {"filter": "model.layers.5.", "value": 0.8} in tuned_w
    assert {"filter": "model.layers.5.", "value": 0.2} in base_w
    assert {"filter": "model.embed_tokens.weight", "value": 0.2} in tuned_w
    assert tuned_w[-1] == {"value": 0.9} and base_w[-1] == {"value": 0.1}

    # first-match-wins evaluation (mergekit's rule) gives tensor_alphas for every tensor
    def first_match(ws, name):
        return next(e["value"] for e in ws if "filter" not in e or e["filter"] in name)

    ta = tensor_alphas(names, "block3", [0.2, 0.5, 0.8], head_alpha=0.9)
    for n in names:
        assert first_match(tuned_w, n) == pytest.approx(ta[n]), n
        assert first_match(base_w, n) == pytest.approx(1 - ta[n]), n
    glob = mergekit_config("b", "t", names, "block3", [0.3] * 3)
    assert glob["models"][1]["parameters"]["weight"] == 0.3
    assert glob["models"][0]["parameters"]["weight"] == 0.7


def test_mergekit_schema_accepts_config(tmp_path):
    mk = pytest.importorskip("mergekit.config", reason="mergekit not installed (pip install tandem[mergekit])")
    names = merge_names(tiny_gpt2())
    p = write_mergekit_config(tmp_path / "m.yaml", "base-dir", "tuned-dir", names, "block3", [0.1, 0.4, 0.7])
    cfg = mk.MergeConfiguration.model_validate(yaml.safe_load(p.read_text()))
    assert cfg.merge_method == "linear"
    glob = mk.MergeConfiguration.model_validate(mergekit_config("b", "t", names, "block3", [0.3] * 3))
    assert glob.models[1].parameters["weight"] == 0.3
    # mergekit's own resolver gives our alpha for a block tensor
    from mergekit.config import evaluate_setting

    w = cfg.models[1].parameters["weight"]
    assert evaluate_setting("transformer.h.2.attn.c_attn.weight", w, validate=float) == pytest.approx(0.7)
    assert evaluate_setting("transformer.ln_f.weight", w, validate=float) == pytest.approx(0.4)
