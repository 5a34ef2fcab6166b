"""A run's stage (``RUN/stages/NN-name``) as a model reference: the run's final model carrying that stage's trainable
weights (LoRA and full fine-tune), merged for evaluation and model averaging, with its run's tokenizer; a stage of a
run without a final model is refused in one line."""

from __future__ import annotations

import pytest
import torch
from helpers_entry import train
from helpers_recipe import base_raw, with_overrides
from safetensors.torch import load_file

from tandem.models import load_full_weights, load_merged, stage_weights

pytestmark = pytest.mark.usefixtures("one_thread")


def sequential_run(tmp_path, tiny_model_dir, synthetic_files, lora: bool):
    over = {"schedule.max_steps_per_stage": 2, "checkpoint.every": 0, "optimizer.lr": 5e-2}
    if lora:
        over["model.lora"] = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    train(with_overrides(base_raw(tmp_path, tiny_model_dir, synthetic_files, "sequential"), over))
    return tmp_path / "run"


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_a_stage_loads_the_final_model_with_that_stages_weights(tmp_path, tiny_model_dir, synthetic_files, lora):
    run = sequential_run(tmp_path, tiny_model_dir, synthetic_files, lora)
    sft, pref = run / "stages" / "01-sft", run / "stages" / "02-pref"
    assert stage_weights(sft) == (str(run / "final"), sft / "end.safetensors")
    final = load_full_weights(run, dtype=torch.float32).state_dict()
    after_sft = load_full_weights(sft, dtype=torch.float32).state_dict()
    after_pref = load_full_weights(pref, dtype=torch.float32).state_dict()
    base = load_full_weights(tiny_model_dir, dtype=torch.float32).state_dict()
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(after_sft[q], final[q]) and not torch.equal(after_sft[q], base[q])
    torch.testing.assert_close(after_pref[q], final[q])  # the last stage's end is the final model
    if not lora:  # a full fine-tune's stage file holds the weights themselves
        torch.testing.assert_close(after_sft[q], load_file(str(sft / "end.safetensors"))[q])
    model, tok = load_merged(sft, dtype=torch.float32)  # what tandem eval and tandem tax load
    torch.testing.assert_close(model.state_dict()[q], after_sft[q])
    assert tok("a short text").input_ids  # the run's tokenizer


def test_a_stage_of_an_unfinished_run_is_refused(tmp_path):
    stage = tmp_path / "run" / "stages" / "01-sft"
    stage.mkdir(parents=True)
    (stage / "end.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="without a final model"):
        stage_weights(stage)
    assert stage_weights(tmp_path / "run") is None and stage_weights(tmp_path) is None


def test_tax_between_a_runs_sft_stage_and_its_final_model(tmp_path, tiny_model_dir, synthetic_files):
    """``tandem tax`` with theta_0 = RUN/stages/01-sft and theta_1 = RUN (a LoRA run, its adapter on its own base):
    alpha 0 is the SFT stage's model (tax 0), alpha 1 the final one (another held-out perplexity)."""
    import json

    from helpers_entry import cli_app
    from helpers_evaluation import tax_inputs
    from typer.testing import CliRunner

    run = sequential_run(tmp_path, tiny_model_dir, synthetic_files, lora=True)
    rm_dir, heldout = tax_inputs(tmp_path)
    recipe = tmp_path / "tax.yaml"
    recipe.write_text(f"""
output_dir: {run}
model: {{name_or_path: {tiny_model_dir}}}
data: {{}}
objectives: {{}}
tax:
  base: {run / 'stages' / '01-sft'}
  tuned: {run}
  out: {tmp_path / 'tax'}
  groups: block2
  sweep: [0.0, 1.0]
  trials: 0
  prompts: {{source: {synthetic_files['sft']}, limit: 2}}
  reward_model: {rm_dir}
  heldout_text: {heldout}
  max_new_tokens: 2
  adaptive: {{enabled: false}}
""")
    res = CliRunner().invoke(cli_app, ["tax", str(recipe), "--no-progress"])
    assert res.exit_code == 0, res.output
    points = json.loads((tmp_path / "tax" / "summary.json").read_text())["points"]
    assert points[0]["tax"] == pytest.approx(0.0) and points[1]["tax"] != pytest.approx(0.0)
