"""Issue 16 #9: the mergekit export of a LoRA run references something mergekit can load (``base+adapter`` or the
run's ``final/merged``), checked with mergekit's own config classes and, when mergekit is installed, by running
its merge and comparing with tandem's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from helpers_objectives import tiny_llama

from tandem.merging.mergekit import mergekit_config, mergekit_reference

peft = pytest.importorskip("peft")
NO_MERGEKIT = "mergekit not installed (pip install -e '.[mergekit]')"


def lora_run(root: Path, merged: bool = False) -> tuple[Path, Path]:
    """A base model dir and a tandem-like LoRA run dir (``run/final`` = adapter, optionally ``final/merged``)."""
    from tandem.models.save import save_model

    base = root / "base"
    tiny_llama(0).save_pretrained(base)
    from transformers import LlamaForCausalLM

    model = peft.get_peft_model(LlamaForCausalLM.from_pretrained(base),
                                peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                init_lora_weights=False))
    save_model(model, None, root / "run" / "final", merged=merged)
    return base, root / "run"


def names():
    from tandem.merging.lerp import merge_names

    return merge_names(tiny_llama(0))


def test_references_of_lora_runs(tmp_path):
    base, run = lora_run(tmp_path)
    assert mergekit_reference(run) == f"{base}+{run / 'final'}"  # run dir -> final/ -> base+adapter
    assert mergekit_reference(run / "final") == f"{base}+{run / 'final'}"
    assert mergekit_reference(base) == str(base)  # a full model dir as is
    assert mergekit_reference("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"  # a Hub id as is
    cfg = mergekit_config(str(base), str(run), names(), "block2", [0.25, 0.75])
    assert cfg["models"][1]["model"] == f"{base}+{run / 'final'}" and cfg["models"][0]["model"] == str(base)


def test_a_run_with_merged_weights_points_at_them(tmp_path):
    base, run = lora_run(tmp_path, merged=True)
    assert mergekit_reference(run) == str(run / "final" / "merged")


def test_mergekit_parses_base_plus_adapter(tmp_path):
    mk = pytest.importorskip("mergekit.config", reason=NO_MERGEKIT)
    base, run = lora_run(tmp_path)
    cfg = mk.MergeConfiguration.model_validate(mergekit_config(str(base), str(run), names(), "block2", [0.25, 0.75]))
    ref = cfg.models[1].model
    assert ref.model.path == str(base) and ref.lora is not None and ref.lora.path == str(run / "final")
    assert cfg.models[0].model.lora is None and cfg.models[0].model.model.path == str(base)


def test_mergekit_merge_of_a_lora_run_equals_tandems(tmp_path):
    pytest.importorskip("mergekit.config", reason=NO_MERGEKIT)
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge
    from safetensors.torch import load_file

    from tandem.merging.loading import merge_checkpoints

    base, run = lora_run(tmp_path)
    yml = tmp_path / "merge.yaml"
    merge_checkpoints(base, run / "final", tmp_path / "tandem", group_spec="block2", alphas=[0.25, 0.75],
                      head_alpha=0.5, mergekit_config=yml)
    cfg = MergeConfiguration.model_validate(yaml.safe_load(yml.read_text()))
    run_merge(cfg, str(tmp_path / "mk"), MergeOptions(lora_merge_cache=str(tmp_path / "cache"), copy_tokenizer=False))
    ours = load_file(tmp_path / "tandem" / "model.safetensors")
    theirs = load_file(tmp_path / "mk" / "model.safetensors")
    assert set(ours) == set(theirs)
    for k in ours:
        torch.testing.assert_close(theirs[k].float(), ours[k].float(), rtol=1e-5, atol=1e-6, msg=k)
    b = load_file(base / "model.safetensors")
    assert any(not torch.equal(ours[k], b[k]) for k in ours)  # the adapter did change the merged weights
