"""tandem.models: the one loader -- run dir -> final/, adapter dirs (tokenizer fallback, relative base), a LoRA
reward run loaded merged, "not found: PATH" for missing local paths (GGUF included), Hub ids still go to the Hub."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tandem.models import (
    check_exists,
    load_any,
    load_full_weights,
    load_merged,
    load_policy,
    load_reward_model,
    load_saved,
    load_tokenizer,
    resolve_model_path,
    tokenizer_source,
)
from tandem.models.load import NoSafetensorsError
from tandem.models.resolve import looks_local, torch_dtype

IDS = torch.tensor([[1, 5, 9, 20, 7]])


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _set_base(adapter: Path, base: str) -> None:
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = base
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, tiny_model_dir):
    """base/ (full model), run/final (an adapter dir without tokenizer, base given relative to it),
    reward-run/final (a SEQ_CLS LoRA reward model with its tokenizer), policy-adapter/ (CAUSAL_LM)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    root = tmp_path_factory.mktemp("loading")
    shutil.copytree(tiny_model_dir, root / "base")
    torch.manual_seed(1)
    lm = get_peft_model(AutoModelForCausalLM.from_pretrained(root / "base"),
                        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lm.save_pretrained(root / "run" / "final")
    _set_base(root / "run" / "final", "../../base")  # relative to the adapter dir
    lm.save_pretrained(root / "policy-adapter")
    _set_base(root / "policy-adapter", str(root / "base"))

    torch.manual_seed(2)
    rm = AutoModelForSequenceClassification.from_pretrained(root / "base", num_labels=1)
    rm = get_peft_model(rm, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="SEQ_CLS",
                                       modules_to_save=["score"], init_lora_weights=False))
    with torch.no_grad():
        rm.base_model.model.score.modules_to_save["default"].weight.normal_()
    rm.save_pretrained(root / "reward-run" / "final")
    _set_base(root / "reward-run" / "final", str(root / "base"))
    AutoTokenizer.from_pretrained(root / "base").save_pretrained(root / "reward-run" / "final")
    return root


# --------------------------------------------------------------------------------------- path resolution


@pytest.mark.parametrize("ref,local", [
    ("gpt2", False), ("HuggingFaceTB/SmolLM2-135M-Instruct", False), ("org/name", False),
    ("./model", True), ("../x", True), ("/abs/model", True), ("~/model", True), ("model.gguf", True),
    ("org/name/sub", True), ("a model", True), ("C:\\models\\x", True),
])
def test_looks_local(ref, local):
    assert looks_local(ref) is local


def test_partially_existing_path_is_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    assert looks_local("models/smol") and not looks_local("org/smol")
    with pytest.raises(FileNotFoundError, match="not found: models/smol"):
        check_exists("models/smol")


def test_run_dir_resolves_to_final(dirs):
    assert resolve_model_path(dirs / "run") == str(dirs / "run" / "final")
    assert resolve_model_path(dirs / "base") == str(dirs / "base")  # a model dir stays itself
    assert resolve_model_path("org/name") == "org/name"  # a Hub id as given
    from_run, _ = load_any(dirs / "run")
    from_final, _ = load_saved(dirs / "run" / "final")
    torch.testing.assert_close(logits(from_run), logits(from_final))
    merged = load_full_weights(dirs / "run")
    torch.testing.assert_close(logits(merged), logits(from_final), atol=1e-5, rtol=1e-5)


def test_torch_dtype():
    assert torch_dtype(None) == "auto" and torch_dtype("auto") == "auto"
    assert torch_dtype("bfloat16") is torch.bfloat16 and torch_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="dtype 'fp8'"):
        torch_dtype("fp8")


# ------------------------------------------------------------------------------------------ adapter dirs


def test_adapter_dir_tokenizer_falls_back_to_the_base(dirs):
    base_tok = load_tokenizer(str(dirs / "base"))
    assert tokenizer_source(dirs / "run" / "final") == str(dirs / "run" / "final" / "../../base")
    tok = load_tokenizer(str(dirs / "run" / "final"))
    assert tok.get_vocab() == base_tok.get_vocab()
    # an adapter dir with its own tokenizer files uses them
    own = dirs / "own-tok"
    shutil.copytree(dirs / "run" / "final", own)
    _set_base(own, str(dirs / "base"))
    base_tok.add_tokens(["<extra-token>"])
    base_tok.save_pretrained(own)
    assert tokenizer_source(own) == str(own)
    assert "<extra-token>" in load_tokenizer(str(own)).get_vocab()
    _, tok2 = load_merged(own)
    assert "<extra-token>" in tok2.get_vocab()


def test_load_saved_adapter_is_not_merged_and_load_merged_is(dirs):
    from peft import PeftModel

    peft_model, _ = load_saved(dirs / "run")
    assert isinstance(peft_model, PeftModel)
    merged, tok = load_merged(dirs / "run")
    assert not isinstance(merged, PeftModel) and not merged.training
    torch.testing.assert_close(logits(merged), logits(peft_model), atol=1e-5, rtol=1e-5)
    base = AutoModelForCausalLM.from_pretrained(dirs / "base")
    assert not torch.allclose(logits(merged), logits(base))  # the adapter is applied


def test_reward_lora_run_loads_merged(dirs):
    from peft import PeftModel

    peft_rm, _ = load_saved(dirs / "reward-run")
    assert isinstance(peft_rm, PeftModel) and peft_rm.config.num_labels == 1
    rm, tok = load_reward_model(dirs / "reward-run")
    assert not isinstance(rm, PeftModel) and rm.config.num_labels == 1
    assert rm.config.pad_token_id == tok.pad_token_id
    torch.testing.assert_close(logits(rm), logits(peft_rm), atol=1e-5, rtol=1e-5)
    assert logits(rm).shape == (1, 1)
    with pytest.raises(ValueError, match="not a reward model"):
        load_reward_model(dirs / "policy-adapter")


def test_reward_model_from_a_causal_lm_gets_a_new_head(dirs):
    rm, tok = load_reward_model(str(dirs / "base"), dtype="float32")
    lm = AutoModelForCausalLM.from_pretrained(dirs / "base")
    assert rm.config.num_labels == 1 and rm.score.weight.shape == (1, lm.config.hidden_size)
    assert all(torch.equal(a, b) for a, b in zip(lm.model.state_dict().values(), rm.model.state_dict().values()))


def test_load_saved_refuses_a_dir_without_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a model dir"):
        load_saved(tmp_path / "empty")


def test_adapter_without_safetensors_is_refused(dirs, tmp_path):
    bad = tmp_path / "adapter"
    shutil.copytree(dirs / "policy-adapter", bad)
    (bad / "adapter_model.safetensors").unlink()
    with pytest.raises(NoSafetensorsError, match="adapter_model.safetensors"):
        load_saved(bad)
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_full_weights(bad)


# ---------------------------------------------------------------------------------------- missing paths


@pytest.fixture
def no_hub(monkeypatch):
    """Fail the test if transformers is asked to load anything."""
    import transformers

    def refuse(*a, **k):
        raise AssertionError(f"from_pretrained called with {a}")

    for cls in (transformers.AutoModelForCausalLM, transformers.AutoModelForSequenceClassification,
                transformers.AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained", refuse)


LOADERS = [load_policy, load_reward_model, load_saved, load_any, load_tokenizer, load_full_weights, load_merged]


@pytest.mark.parametrize("loader", LOADERS, ids=lambda f: f.__name__)
def test_missing_local_path_says_not_found(loader, tmp_path, no_hub):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match=f"not found: {missing}$"):
        loader(str(missing))
    with pytest.raises(FileNotFoundError, match=r"not found: \./also-missing"):
        loader("./also-missing")


@pytest.mark.parametrize("loader", [load_policy, load_reward_model, load_any, load_tokenizer], ids=lambda f: f.__name__)
def test_missing_gguf_says_not_found(loader, tmp_path, no_hub):
    with pytest.raises(FileNotFoundError, match="not found: .*model.Q4.gguf"):
        loader(str(tmp_path / "model.Q4.gguf"))
    with pytest.raises(FileNotFoundError, match="not found: model.gguf"):
        loader("model.gguf")


def test_missing_gguf_file_in_an_existing_dir(tmp_path, no_hub):
    with pytest.raises(FileNotFoundError, match=f"not found: {tmp_path / 'm.gguf'}"):
        load_policy(str(tmp_path), gguf_file="m.gguf")


def test_missing_base_of_an_adapter_says_not_found(dirs, tmp_path, no_hub):
    bad = tmp_path / "adapter"
    shutil.copytree(dirs / "policy-adapter", bad)
    _set_base(bad, str(tmp_path / "gone-base"))
    with pytest.raises(FileNotFoundError, match=f"base model not found: {tmp_path / 'gone-base'}"):
        load_saved(bad)


@pytest.mark.parametrize("ref", ["org/name", "gpt2"])
def test_hub_id_still_goes_to_the_hub(ref, monkeypatch):
    import transformers

    seen = []

    class Offline(Exception):
        pass

    def fake(name, *a, **k):
        seen.append(name)
        raise Offline

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake)
    for loader in (load_policy, load_any, load_tokenizer, load_full_weights):
        with pytest.raises(Offline):
            loader(ref)
    assert seen == [ref] * 4
