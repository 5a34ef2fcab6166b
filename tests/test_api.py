"""The Python API as a user calls it (tandem.api, docs/api.md): a notebook trains DPO from a ``datasets.Dataset`` and
an in-memory model and generates with the result; callbacks stop a run that ``--resume`` finishes with the weights of
an uninterrupted run; user errors raise ``tandem.TandemError`` with the CLI's line, before any directory exists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

import tandem
from tandem.cli.main import app
from tandem.data import synthetic


def tiny_in_memory(seed: int = 0, chat_template: bool = True):
    from helpers_evaluation import tiny_config
    from helpers_tokenizer import make_tokenizer
    from transformers import LlamaForCausalLM

    tok = make_tokenizer(chat_template=chat_template)
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config(tok, max_position_embeddings=512)), tok


NOTEBOOK = {"name": "nb", "method": "dpo", "learning_rate": 1e-3, "max_steps": 3, "per_device_train_batch_size": 4,
            "max_length": 64, "precision": "fp32", "logging": {"progress": False}}


def test_notebook_dpo_from_a_dataset_and_a_model_object(tmp_path, one_thread):
    import datasets

    model, tok = tiny_in_memory()
    pairs = datasets.Dataset.from_list(synthetic.to_records(synthetic.preference_pairs(24, 1)))
    run = tandem.train({**NOTEBOOK, "output_dir": str(tmp_path / "dpo")}, model=model, tokenizer=tok,
                       data={"preference": pairs})

    assert isinstance(run, tandem.Run) and run.dir == tmp_path / "dpo" and not run.stopped
    assert run.summary["global_steps"] == 3 and run.summary["method"] == "dpo"
    train_rows = [r for r in run.metrics if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3] and all("rewards/margin" in r for r in train_rows)
    saved = yaml.safe_load((run.dir / "recipe.yaml").read_text())
    assert saved["optimizer"]["lr"] == 1e-3 and saved["batching"]["batch_size"] == 4  # TRL names, resolved
    assert saved["objectives"]["preference"]["name"] == "dpo"  # method: dpo implies its objective
    assert saved["data"]["preference"]["source"].startswith("memory://preference-")

    trained, tok2 = run.model(), run.tokenizer()
    ids = tok2.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
                                   return_tensors="pt", return_dict=True)
    out = trained.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok2.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]
    before = {k: v for k, v in tiny_in_memory()[0].state_dict().items()}
    assert any(not torch.equal(before[k], v) for k, v in trained.state_dict().items() if k in before)  # it trained


def test_a_peft_model_stays_peft(tmp_path, one_thread):
    from peft import LoraConfig, PeftModel, get_peft_model

    model, tok = tiny_in_memory()
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    rows = synthetic.to_records(synthetic.instruction_tasks(16, 0))
    run = tandem.train({"method": "sft", "max_steps": 2, "batching": {"batch_size": 4}, "max_length": 64,
                        "precision": "fp32", "logging": {"progress": False}, "output_dir": str(tmp_path / "sft")},
                       model=peft_model, tokenizer=tok, data={"sft": rows})
    assert isinstance(peft_model, PeftModel)
    assert (run.dir / "final" / "adapter_config.json").is_file() and (run.dir / "final" / "merged").is_dir()
    assert run.final_dir == run.dir / "final" / "merged"


class StopAt(tandem.Callback):
    def __init__(self, step: int | None = None, stage: str | None = None):
        self.step, self.stage, self.seen = step, stage, {"step": [], "validate": [], "stage_end": []}

    def on_step(self, row):
        self.seen["step"].append(row["step"])
        return "stop" if row["step"] == self.step else None

    def on_validate(self, row):
        self.seen["validate"].append(row["stage"])

    def on_stage_end(self, stage):
        self.seen["stage_end"].append(stage["name"])
        return "stop" if stage["name"] == self.stage else None


def _recipe_file(tmp_path, tiny_model_dir, synthetic_files, out: str, method: str = "sft") -> Path:
    raw = {"name": "cb", "output_dir": str(tmp_path / out), "precision": "fp32",
           "model": {"name_or_path": str(tiny_model_dir)},
           "data": {"sft": {"source": str(synthetic_files["sft"])},
                    "preference": {"source": str(synthetic_files["preference"])}, "max_length": 64, "val_size": 4},
           "batching": {"batch_size": 4}, "optimizer": {"lr": 1e-3, "scheduler": "linear"},
           "schedule": {"method": method, "max_steps_per_stage": 4}, "logging": {"progress": False}}
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("method,stop", [("sft", {"step": 2}), ("sequential", {"stage": "01-sft"})])
def test_a_callback_stops_and_resume_finishes_with_the_same_weights(tmp_path, tiny_model_dir, synthetic_files,
                                                                    one_thread, method, stop):
    full = tandem.train(_recipe_file(tmp_path, tiny_model_dir, synthetic_files, "full", method))
    cb = StopAt(**stop)
    path = _recipe_file(tmp_path, tiny_model_dir, synthetic_files, "stopped", method)
    stopped = tandem.train(path, callbacks=[cb])
    assert stopped.stopped and not (stopped.dir / "final").exists()
    assert list((stopped.dir / "checkpoints").iterdir())  # the state is kept
    if "step" in stop:
        assert cb.seen["step"] == [1, 2] and stopped.summary["global_steps"] == 2
    else:
        assert cb.seen["stage_end"] == ["01-sft"] and cb.seen["validate"] == ["01-sft"]
    with pytest.raises(tandem.TandemError, match="no final/ model"):
        stopped.model()

    res = CliRunner().invoke(app, ["train", str(path), "--resume", "--no-progress"])
    assert res.exit_code == 0, res.output
    a, b = (load_file(str(d / "final" / "model.safetensors")) for d in (full.dir, stopped.dir))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((stopped.dir / "summary.json").read_text())
    assert summary["global_steps"] == full.summary["global_steps"]


def test_user_errors_raise_tandem_errors_with_the_cli_line_and_write_nothing(tmp_path, tiny_model_dir, one_thread):
    model, tok = tiny_in_memory()
    out = tmp_path / "bad"
    with pytest.raises(tandem.TandemError) as e:  # a data error: found before the run directory exists
        tandem.train({**NOTEBOOK, "output_dir": str(out)}, model=model, tokenizer=tok,
                     data={"preference": [{"prompt": "hi", "chosen": "a"}]})
    assert "rejected" in str(e.value) and "\n" not in str(e.value)
    assert not out.exists()
    with pytest.raises(tandem.TandemError, match=r"did you mean 'schedule.max_steps'\?") as e:
        tandem.train({**NOTEBOOK, "output_dir": str(out), "schedule": {"max_step": 3}}, model=model, tokenizer=tok,
                     data={"preference": [{"prompt": "hi", "chosen": "a", "rejected": "b"}]})
    assert str(e.value).startswith("invalid recipe: ") and "\n" not in str(e.value)  # the CLI's one line
    with pytest.raises(tandem.TandemError, match="not found"):
        tandem.train({**NOTEBOOK, "output_dir": str(out)}, model=str(tmp_path / "nope"),
                     data={"preference": str(tmp_path / "pairs.jsonl")})
    with pytest.raises(tandem.TandemError, match="exactly one of --alpha"):
        tandem.merge(tiny_model_dir, tiny_model_dir, tmp_path / "m")
    assert not out.exists() and not (tmp_path / "m").exists()


def test_recipe_objects(tmp_path):
    r = tandem.Recipe.from_dict({"output_dir": str(tmp_path / "r"), "model": {"name_or_path": "m"},
                                 "data": {"preference": {"source": "p.jsonl"}}, "method": "dpo"})
    assert r.set("optimizer.lr", 2e-5) is r and r.optimizer.lr == 2e-5
    assert r.set("num_train_epochs", 2).schedule.epochs == 2.0  # a TRL name
    with pytest.raises(tandem.TandemError, match=r"Recipe.set\('optimizer.lr', -1.0\): 'optimizer.lr': Input should be greater"):
        r.set("optimizer.lr", -1.0)
    assert r.optimizer.lr == 2e-5  # a refused value leaves the recipe as it was
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(r.model_dump(mode="json")))
    assert tandem.Recipe.from_yaml(path, ["optimizer.lr=3e-5"]).optimizer.lr == 3e-5


def test_import_tandem_is_light_and_exports_the_api():
    import subprocess
    import sys

    code = ("import sys, tandem; assert 'torch' not in sys.modules and 'tandem.api' not in sys.modules; "
            "assert tandem.train is tandem.api.train and issubclass(tandem.api.InputError, tandem.TandemError); "
            "print(sorted(tandem.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "train" in out and "Recipe" in out and "TandemError" in out


def test_evaluate_merge_and_probe_as_functions(tmp_path, tiny_model_dir, synthetic_files, one_thread):
    heldout = tmp_path / "heldout.txt"
    heldout.write_text("The cat sat on the mat.\n\nWhat is 2 + 3? It is 5.\n")
    run = tandem.train({"method": "sft", "max_steps": 1, "batching": {"batch_size": 4}, "max_length": 64,
                        "precision": "fp32", "logging": {"progress": False}, "output_dir": str(tmp_path / "run"),
                        "eval": {"metrics": ["perplexity"], "heldout_text": str(heldout)}},
                       model=str(tiny_model_dir), data={"sft": synthetic_files["sft"]})
    res = tandem.evaluate(run.dir)
    assert res["metrics"]["perplexity"]["perplexity"] > 0 and Path(res["out"]) == run.dir / "eval"
    assert json.loads((run.dir / "eval" / "results.json").read_text())["metrics"] == res["metrics"]
    with pytest.raises(tandem.TandemError, match="unknown metric"):
        tandem.evaluate(run.dir, metrics=["perplexty"])

    record = tandem.merge(tiny_model_dir, run.dir / "final", tmp_path / "merged", alpha=0.5, groups="block2")
    assert record["alphas"] == [0.5, 0.5] and (tmp_path / "merged" / "config.json").is_file()

    summary = tandem.probe(tiny_model_dir, synthetic_files["preference"], tmp_path / "probe", pairs=2, heatmap_pairs=0,
                           max_length=64)
    assert summary["pairs"] == 2 and (tmp_path / "probe" / "summary.json").is_file()
    with pytest.raises(tandem.TandemError, match="no preference pairs"):
        tandem.probe(tiny_model_dir, synthetic_files["sft"], tmp_path / "probe2", pairs=2)
