"""tandem.evaluation.run.evaluate: full and LoRA adapter dirs, results.json / results.md."""

from __future__ import annotations

import json

import pytest
import torch
from helpers_evaluation import tiny_lm, tiny_reward_model

from tandem.evaluation import metrics as M
from tandem.evaluation.generation import generate
from tandem.evaluation.run import evaluate
from tandem.models import load_merged as load_model_and_tokenizer

PROMPTS = [
    [{"role": "user", "content": "What is 23 + 45?"}],
    [{"role": "user", "content": "Write the word river in capital letters."}],
]
REFS = ["The answer is 68.", "RIVER"]
HELDOUT = ["The quick brown fox jumps over the lazy dog."]
MC = [{"question": "What is 23 + 45?", "choices": ["68", "the lazy dog"], "answer": 0}]
SETTINGS = {"temperature": 0.0, "max_new_tokens": 6, "batch_size": 2}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-run")
    model, tok = tiny_lm(seed=2)
    model.save_pretrained(root / "full")
    tok.save_pretrained(root / "full")
    rm, rtok = tiny_reward_model(seed=4)
    rm.save_pretrained(root / "rm")
    rtok.save_pretrained(root / "rm")
    from peft import LoraConfig, get_peft_model

    base = type(model).from_pretrained(root / "full")
    torch.manual_seed(5)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(root / "adapter")  # no tokenizer here: taken from the base model
    return root


def test_evaluate_full_model(dirs):
    out = dirs / "eval-full"
    res = evaluate(
        dirs / "full", out, ["rouge", "reward", "reward_win_rate", "perplexity", "mc_accuracy"],
        prompts=PROMPTS, references=REFS, settings=SETTINGS, reward_model_path=dirs / "rm",
        heldout_texts=HELDOUT, perplexity_max_length=64, mc_rows=MC,
    )
    model, tok = load_model_and_tokenizer(dirs / "full")
    outputs = generate(model, tok, PROMPTS, temperature=0, max_new_tokens=6)
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert [r["output"] for r in rows] == outputs
    m = res["metrics"]
    assert m["rouge"] == M.rouge_scores(outputs, REFS)
    rm, rtok = tiny_reward_model(seed=4)
    a = M.reward_scores(rm, rtok, PROMPTS, outputs)
    b = M.reward_scores(rm, rtok, PROMPTS, REFS)
    assert m["reward"]["mean"] == pytest.approx(sum(a) / 2, abs=1e-5)
    assert m["reward"]["baseline_mean"] == pytest.approx(sum(b) / 2, abs=1e-5)
    assert m["reward_win_rate"] == M.reward_win_rate(a, b)
    assert m["perplexity"]["perplexity"] == pytest.approx(M.perplexity(model, tok, HELDOUT, 64)["perplexity"], rel=1e-5)
    assert m["mc_accuracy"]["n"] == 1
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["metrics"]["rouge"] == m["rouge"]
    assert on_disk["settings"]["temperature"] == 0.0
    md = (out / "results.md").read_text()
    assert "| metric | value |" in md and "| rouge/rouge1 |" in md and "| perplexity/perplexity |" in md


def test_evaluate_adapter_dir_and_errors(dirs):
    model, tok = load_model_and_tokenizer(dirs / "adapter")
    full, _ = load_model_and_tokenizer(dirs / "full")
    ids = torch.tensor([[1, 5, 9, 20]])
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, full(input_ids=ids).logits)  # the LoRA is applied
    res = evaluate(dirs / "adapter", dirs / "eval-adapter", ["perplexity"], heldout_texts=HELDOUT, perplexity_max_length=64)
    assert res["metrics"]["perplexity"]["perplexity"] == pytest.approx(M.perplexity(model, tok, HELDOUT, 64)["perplexity"], rel=1e-5)
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(dirs / "full", dirs / "e", ["bleu"])
    with pytest.raises(ValueError, match="needs references"):
        evaluate(dirs / "full", dirs / "e", ["rouge"], prompts=PROMPTS, settings=SETTINGS)


def reply_length(prompt: str, reply: str) -> float:
    """A programmatic reward for the test: characters in the reply."""
    return float(len(reply))


def test_reward_fn_metric_scores_each_generation(dirs):
    out = dirs / "eval-fn"
    res = evaluate(dirs / "full", out, ["reward_fn"], prompts=PROMPTS, settings=SETTINGS,
                   reward_fn="test_evaluation_run:reply_length")
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    expected = sum(len(r["output"]) for r in rows) / len(rows)
    assert res["metrics"]["reward_fn"] == {"mean": pytest.approx(expected), "n": len(PROMPTS)}
    with pytest.raises(ValueError, match="reward_fn"):
        evaluate(dirs / "full", dirs / "eval-fn2", ["reward_fn"], prompts=PROMPTS, settings=SETTINGS)


def test_reward_model_from_a_lora_reward_run(tmp_path, tiny_model_dir, synthetic_files):
    from test_engine_train import recipe

    from tandem.pipelines.train import train
    from tandem.models import load_reward_model

    r = recipe(tmp_path, tiny_model_dir, synthetic_files, method="reward",
               **{"model.lora": {"r": 4, "alpha": 8, "target_modules": "all-linear"}, "schedule.max_steps_per_stage": 2})
    train(r)
    adapter, tok = load_reward_model(tmp_path / "run" / "final")
    merged, tok2 = load_reward_model(tmp_path / "run" / "final" / "merged")
    prompts = [[{"role": "user", "content": "What is 2 + 2?"}]]
    a = M.reward_scores(adapter, tok, prompts, ["4"])
    b = M.reward_scores(merged, tok2, prompts, ["4"])
    assert a == pytest.approx(b, abs=1e-5)
