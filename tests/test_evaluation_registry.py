"""tandem.evaluation.registry: the metric table, its up-front input checks, adding a metric in one line."""

from __future__ import annotations

import json

import pytest
from helpers_evaluation import tiny_lm, tiny_reward_model

from tandem.evaluation import metrics as M
from tandem.evaluation.context import EvalContext, GenerationSettings
from tandem.evaluation.judge import JudgeConfig
from tandem.evaluation.registry import METRIC_TABLE, METRICS, NEEDS_GENERATION, Metric, check_metrics
from tandem.evaluation.run import evaluate

PROMPTS = [[{"role": "user", "content": "What is 23 + 45?"}], [{"role": "user", "content": "Hi"}]]
REFS = ["68", "hello"]
SETTINGS = {"temperature": 0.0, "max_new_tokens": 4, "batch_size": 2}


def test_table_lists_every_metric_with_its_generation_flag():
    assert set(METRICS) == {"exact_match", "rouge", "reward", "reward_fn", "reward_win_rate", "judge_win_rate",
                            "perplexity", "mc_accuracy", "lm_eval", "bartscore", "reference_nll",
                            "implicit_reward_accuracy", "conflict"}
    assert NEEDS_GENERATION == {"exact_match", "rouge", "reward", "reward_fn", "reward_win_rate", "judge_win_rate",
                                "bartscore", "conflict"}
    assert [m for m in METRICS if not METRIC_TABLE[m].loads_model] == ["lm_eval"]


def test_unknown_metric_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['bleu'\]; choose from \[.*'rouge'"):
        evaluate(tmp_path / "model-never-loaded", tmp_path / "out", ["rouge", "bleu"])
    assert not (tmp_path / "out").exists()


JUDGE = JudgeConfig(model="judge-model")


@pytest.mark.parametrize("metric,given,message", [
    ("rouge", {"prompts": PROMPTS}, "metric 'rouge' needs references"),
    ("exact_match", {"prompts": PROMPTS}, "metric 'exact_match' needs references"),
    ("rouge", {"references": REFS}, r"metrics \['rouge'\] need prompts"),
    ("reward", {"prompts": PROMPTS}, "metrics 'reward'/'reward_win_rate' need reward_model_path"),
    ("reward_win_rate", {"prompts": PROMPTS, "reward_model_path": "rm"}, "metric 'reward_win_rate' needs baseline or references"),
    ("reward_fn", {"prompts": PROMPTS}, r"metric 'reward_fn' needs eval.reward_fn \('module:function'\)"),
    ("judge_win_rate", {"prompts": PROMPTS, "references": REFS}, r"metric 'judge_win_rate' needs judge=JudgeConfig"),
    ("judge_win_rate", {"prompts": PROMPTS, "judge": JUDGE}, "baseline or references"),
    ("perplexity", {}, "metric 'perplexity' needs heldout_texts"),
    ("mc_accuracy", {"mc_rows": []}, "metric 'mc_accuracy' needs mc_rows"),
    ("lm_eval", {"model_path": "m"}, "metric 'lm_eval' needs model_path and lm_eval_tasks"),
])
def test_missing_input_is_named_before_the_model_loads(metric, given, message, tmp_path, monkeypatch):
    import tandem.evaluation.run as R

    monkeypatch.setattr(R, "load_merged", lambda *a, **k: pytest.fail("the model was loaded before the check"))
    kw = {"model_path": tmp_path / "model", **given}
    with pytest.raises(ValueError, match=message):
        evaluate(out_dir=tmp_path / "out", metrics=[metric], settings=SETTINGS, **kw)
    ctx = EvalContext(out_dir=tmp_path, settings=GenerationSettings(), **given)
    with pytest.raises(ValueError, match=message):
        check_metrics([metric], ctx)


def test_check_metrics_returns_table_order():
    ctx = EvalContext(out_dir=None, settings=GenerationSettings(), prompts=PROMPTS, references=REFS,
                      heldout_texts=["x"])
    assert check_metrics(["perplexity", "rouge", "exact_match"], ctx) == ["exact_match", "rouge", "perplexity"]


def test_a_new_metric_is_one_function_and_one_table_line(tmp_path, monkeypatch):
    def n_words(c: EvalContext) -> dict:
        return {"mean": sum(len(o.split()) for o in c.outputs) / len(c.outputs)}

    monkeypatch.setitem(METRIC_TABLE, "n_words", Metric(n_words, generates=True))
    model, tok = tiny_lm(seed=1)
    res = evaluate(None, tmp_path / "out", ["n_words", "rouge"], prompts=PROMPTS, references=REFS, settings=SETTINGS,
                   model=model, tokenizer=tok)
    outputs = [json.loads(x)["output"] for x in (tmp_path / "out" / "generations.jsonl").read_text().splitlines()]
    assert res["metrics"]["n_words"] == {"mean": sum(len(o.split()) for o in outputs) / 2}
    assert list(res["metrics"]) == ["rouge", "n_words"]  # table order; a new line goes at the end


def test_reward_metrics_score_the_outputs_once(tmp_path, monkeypatch):
    calls = []
    real = M.reward_scores
    monkeypatch.setattr(M, "reward_scores", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    model, tok = tiny_lm(seed=1)
    rm, rtok = tiny_reward_model(seed=3)
    res = evaluate(None, tmp_path / "out", ["reward", "reward_win_rate"], prompts=PROMPTS, references=REFS,
                   settings=SETTINGS, model=model, tokenizer=tok, reward_model=rm, reward_tokenizer=rtok)
    assert len(calls) == 2 and calls[1] == REFS  # the outputs, then the references: once each
    a, b = real(rm, rtok, PROMPTS, calls[0]), real(rm, rtok, PROMPTS, REFS)
    assert res["metrics"]["reward"] == {"mean": pytest.approx(sum(a) / 2), "baseline_mean": pytest.approx(sum(b) / 2)}
    assert res["metrics"]["reward_win_rate"] == M.reward_win_rate(a, b)
