"""tandem.evaluation.metrics: ROUGE, reward scores, win rates, temperature sweeps, perplexity, MC accuracy."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers_evaluation import tiny_lm, tiny_reward_model
from rouge_score import rouge_scorer

from tandem.data.encode import prompt_ids, response_ids
from tandem.evaluation import metrics as M

# ------------------------------------------------------------------------------------------------ ROUGE


def test_rouge_matches_rouge_score_package():
    preds = ["the cats are sitting on the mat", "a quick brown fox", "running dogs bark loudly"]
    refs = ["the cat sat on the mat", "the quick brown fox jumps", "the dog runs and barks"]
    got = M.rouge_scores(preds, refs)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    per = [scorer.score(r, p) for p, r in zip(preds, refs)]
    for t in ("rouge1", "rouge2", "rougeL"):
        assert got[t] == pytest.approx(sum(s[t].fmeasure for s in per) / 3)
    # stemming matters: "cats"/"cat" match only with the stemmer
    assert M.rouge_scores(["cats"], ["cat"])["rouge1"] == 1.0
    assert M.rouge_scores(["cats"], ["cat"], use_stemmer=False)["rouge1"] == 0.0


def test_rouge_hand_values():
    assert M.rouge_scores(["the cat sat"], ["the cat sat"]) == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert M.rouge_scores(["alpha beta"], ["gamma delta"]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    # "a b c d" vs "a b x y": unigram P = R = 2/4 -> F1 0.5; bigrams: 1 of 3 -> 1/3; LCS 2 -> 0.5
    r = M.rouge_scores(["a b c d"], ["a b x y"], use_stemmer=False)
    assert r["rouge1"] == pytest.approx(0.5)
    assert r["rouge2"] == pytest.approx(1 / 3)
    assert r["rougeL"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        M.rouge_scores(["a", "b"], ["a"])


# ----------------------------------------------------------------------------------------- reward model

PROMPTS = [
    [{"role": "user", "content": "What is 23 + 45?"}],
    [{"role": "user", "content": "Write the word river in capital letters, please."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
]
RESPONSES = ["68", "RIVER", "Hello there, how can I help you today?"]


@pytest.fixture(scope="module")
def rm():
    return tiny_reward_model(seed=3)


def test_reward_scores_equal_models_own_unpadded_score(rm):
    model, tok = rm
    got = M.reward_scores(model, tok, PROMPTS, RESPONSES, batch_size=2)
    got_b1 = M.reward_scores(model, tok, PROMPTS, RESPONSES, batch_size=1)
    for p, r, g, g1 in zip(PROMPTS, RESPONSES, got, got_b1):
        ids = prompt_ids(tok, p) + response_ids(tok, r)
        assert ids[-1] == tok.eos_token_id  # scored at the EOS that ends the response
        with torch.no_grad():
            own = float(model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, 0])
        assert g == pytest.approx(own, abs=1e-5)
        assert g1 == pytest.approx(own, abs=1e-5)
    assert len(set(round(g, 6) for g in got)) == 3  # different inputs, different scores


def test_reward_scores_fallback_path_without_score_head(rm):
    model, tok = rm

    class Wrapped(torch.nn.Module):  # no `score` head: scored one unpadded sequence at a time
        def __init__(self, m):
            super().__init__()
            self.m = m
            self.config = m.config

        def forward(self, **kw):
            return self.m(**kw)

    assert M.reward_scores(Wrapped(model), tok, PROMPTS, RESPONSES) == pytest.approx(
        M.reward_scores(model, tok, PROMPTS, RESPONSES), abs=1e-5
    )


def test_reward_win_rate_and_ties(rm):
    model, tok = rm
    a = M.reward_scores(model, tok, PROMPTS, RESPONSES)
    b = M.reward_scores(model, tok, PROMPTS, ["no", "river", "Hello"])
    wr = M.reward_win_rate(a, b)
    wins = sum(x > y for x, y in zip(a, b))
    assert wr == {"win_rate": wins / 3, "wins": wins, "losses": 3 - wins, "ties": 0, "n": 3}

    # hand case: wins 2, losses 1, ties 2 -> 2 / (5 - 2)
    r = M.reward_win_rate([1.0, 2.0, 0.0, 5.0, 3.0], [0.0, 1.0, 1.0, 5.0, 3.0])
    assert r == {"win_rate": pytest.approx(2 / 3), "wins": 2, "losses": 1, "ties": 2, "n": 5}
    # tie_eps widens ties: |diff| <= 1 is a tie -> all five are ties -> no decisive pair -> 0.5
    r = M.reward_win_rate([1.0, 2.0, 0.0, 5.0, 3.0], [0.0, 1.0, 1.0, 5.0, 3.0], tie_eps=1.0)
    assert r == {"win_rate": 0.5, "wins": 0, "losses": 0, "ties": 5, "n": 5}
    assert M.reward_win_rate([], [])["n"] == 0
    with pytest.raises(ValueError):
        M.reward_win_rate([1.0], [1.0, 2.0])


# ------------------------------------------------------------------------------------ temperature sweep


def test_temperature_sweep_mean_std():
    calls = []

    def metric(t, seed):
        calls.append((t, seed))
        return t * 10 + seed  # seeds 5, 6, 7 -> values t*10 + {5, 6, 7}: mean t*10 + 6, sample std 1

    rows = M.temperature_sweep(metric, [0.0, 0.5], repeats=3, seed=5)
    assert calls == [(0.0, 5), (0.0, 6), (0.0, 7), (0.5, 5), (0.5, 6), (0.5, 7)]
    assert [(r["temperature"], r["metric"], r["mean"], r["std"], r["n"]) for r in rows] == [
        (0.0, "value", 6.0, 1.0, 3),
        (0.5, "value", 11.0, 1.0, 3),
    ]
    rows = M.temperature_sweep(lambda t, s: {"a": s, "b": 2.0}, [1.0], repeats=2, seed=0)
    assert [(r["metric"], r["mean"], r["std"]) for r in rows] == [("a", 0.5, pytest.approx(math.sqrt(0.5))), ("b", 2.0, 0.0)]
    assert M.temperature_sweep(lambda t, s: 3.0, [1.0], repeats=1)[0]["std"] == 0.0


# ------------------------------------------------------------------------------------------ perplexity


@pytest.fixture(scope="module")
def lm():
    return tiny_lm(seed=1)


def _hand_nll(model, ids):
    """Sum of -log p(ids[t] | ids[:t]) for t >= 1, straight from the full logits."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    return -sum(float(lp[t - 1, ids[t]]) for t in range(1, len(ids))), len(ids) - 1


def test_perplexity_is_exp_token_weighted_mean_nll(lm):
    model, tok = lm
    texts = ["The quick brown fox jumps over the lazy dog.", "Hi there", "What is 23 + 45?"]
    tot, cnt = 0.0, 0
    for t in texts:
        s, c = _hand_nll(model, tok(t)["input_ids"])
        tot, cnt = tot + s, cnt + c
    got = M.perplexity(model, tok, texts, max_length=128)
    assert got["tokens"] == cnt
    assert got["nll"] == pytest.approx(tot / cnt, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(tot / cnt), rel=1e-5)


def test_perplexity_sliding_window(lm):
    model, tok = lm
    text = "Below is an instruction that describes a task. Write a response that appropriately completes it."
    ids = tok(text)["input_ids"]
    assert len(ids) > 12
    max_length, stride = 8, 3
    # hand: target chunks [1,4), [4,7), ...; each scored with the window ids[max(0, t1-8):t1]
    tot = 0.0
    for t0 in range(1, len(ids), stride):
        t1 = min(t0 + stride, len(ids))
        w0 = max(0, t1 - max_length)
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=torch.tensor([ids[w0:t1]]), use_cache=False).logits[0].double(), -1)
        tot -= sum(float(lp[g - w0 - 1, ids[g]]) for g in range(t0, t1))
    got = M.perplexity(model, tok, [text], max_length=max_length, stride=stride)
    assert got["tokens"] == len(ids) - 1
    assert got["nll"] == pytest.approx(tot / (len(ids) - 1), rel=1e-5)
    # a window that covers the whole text gives the plain full-context value
    full = M.perplexity(model, tok, [text], max_length=256)
    s, c = _hand_nll(model, ids)
    assert full["nll"] == pytest.approx(s / c, rel=1e-5)
    with pytest.raises(ValueError, match="no token"):
        M.perplexity(model, tok, [""], max_length=8)


# ------------------------------------------------------------------------------- multiple-choice accuracy


def _choice_loglik(model, tok, question, choice):
    ctx = tok(M.mc_context(question))["input_ids"]
    cont = tok(" " + choice, add_special_tokens=False)["input_ids"]
    s, _ = _hand_nll(model, ctx + cont)
    s_ctx, _ = _hand_nll(model, ctx)
    return -(s - s_ctx)  # log p(cont | ctx)


def test_multiple_choice_accuracy_constructed(lm, tmp_path):
    model, tok = lm
    questions = [
        ("What is 23 + 45?", ["68", "the quick brown fox jumps", "RIVER"]),
        ("Which letter comes after g?", ["h", "over the lazy dog again and again", "x"]),
        ("Capital letters?", ["RIVER", "river", "The answer is 68."]),
    ]
    rows, expect, expect_norm = [], [], []
    for q, choices in questions:
        ll = [_choice_loglik(model, tok, q, c) for c in choices]
        best = max(range(3), key=lambda i: ll[i])
        best_norm = max(range(3), key=lambda i: ll[i] / len(" " + choices[i]))
        expect.append(best)
        expect_norm.append(best_norm)
        rows.append({"question": q, "choices": choices, "answer": best})
    # make the last row's gold the length-normalised winner given as a letter
    rows[-1]["answer"] = "ABC"[expect_norm[-1]]
    got = M.multiple_choice_accuracy(model, tok, rows)
    assert got["predictions"] == expect
    assert got["predictions_norm"] == expect_norm
    gold = [0, 0, 0]
    gold[:2] = expect[:2]
    gold[2] = expect_norm[2]
    assert got["acc"] == pytest.approx(sum(p == g for p, g in zip(expect, gold)) / 3)
    assert got["acc_norm"] == pytest.approx(sum(p == g for p, g in zip(expect_norm, gold)) / 3)
    # a row whose answer is deliberately wrong lowers acc by 1/n
    wrong = dict(rows[0], answer=(expect[0] + 1) % 3)
    assert M.multiple_choice_accuracy(model, tok, [rows[0], wrong])["acc"] == 0.5

    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"question": "q", "choices": ["a", "b"], "answer": "C"}\n')
    with pytest.raises(ValueError, match=r"mc.jsonl:4: field 'answer'"):
        M.load_mc_rows(path)
    path.write_text(json.dumps(rows[0]) + "\n")
    assert M.load_mc_rows(path) == [rows[0]]


def test_run_lm_eval_is_guarded():
    if M.lm_eval_available():
        pytest.skip("lm_eval is installed")
    with pytest.raises(ImportError, match="tandem\\[lm-eval\\]"):
        M.run_lm_eval("some/model", ["hellaswag"])
