"""Metrics reference_nll and implicit_reward_accuracy (tandem.evaluation.likelihood): values against a direct full
forward of the tiny model and a hand computation, the reference model (explicit path, LoRA adapter's base), and the
missing-input errors (before any model loads)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import save_tiny_model, write_jsonl
from helpers_evaluation import tiny_lm

from tandem.config.recipe import EvalConfig
from tandem.data.encode import prompt_ids, response_ids
from tandem.data.types import PreferenceExample, user
from tandem.evaluation import likelihood as L
from tandem.evaluation.inputs import eval_inputs
from tandem.evaluation.run import evaluate

PROMPTS = [user("What is 23 + 45?"), user("Write the word 'river' in capital letters.")]
REFS = ["The answer is 68.", "RIVER"]
PAIRS = [PreferenceExample(user("What is 23 + 45?"), "The answer is 68.", "The answer is 12."),
         PreferenceExample(user("Hi"), "Hello, how can I help?", "Go away."),
         PreferenceExample(user("Which letter comes after g?"), "h", "The letter is q, I think.")]
SETTINGS = {"batch_size": 2}


def direct_logp(model, tok, prompt, response) -> tuple[float, int]:
    """Sum of log p(response tokens + EOS | prompt) from one unpadded full forward, and their number."""
    p, r = prompt_ids(tok, prompt), response_ids(tok, response)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([p + r])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return sum(float(lp[len(p) + i - 1, t]) for i, t in enumerate(r)), len(r)


def test_reference_nll_is_the_token_weighted_nll_of_a_direct_forward():
    model, tok = tiny_lm(0)
    parts = [direct_logp(model, tok, p, r) for p, r in zip(PROMPTS, REFS)]
    want = -sum(s for s, _ in parts) / sum(n for _, n in parts)
    for bs in (1, 2):  # padding does not change the value
        got = L.reference_nll(model, tok, PROMPTS, REFS, batch_size=bs)
        assert got["n"] == 2 and got["tokens"] == sum(n for _, n in parts)
        assert got["nll"] == pytest.approx(want, rel=1e-5)


def test_labelled_logps_keep_the_input_order_whatever_the_batching():
    model, tok = tiny_lm(0)
    texts = ["a b c d e f g h", "x", "one two three", "p q", "the longest sequence of them all, by far"]
    seqs = [(ids, [-100] + ids[1:]) for ids in (tok(t)["input_ids"] for t in texts)]
    one = [L.labelled_logps(model, [s], tok.pad_token_id or 0)[0] for s in seqs]
    for bs in (2, 3, 5):  # batches are formed by length, results come back in the caller's order
        got = L.labelled_logps(model, seqs, tok.pad_token_id or 0, batch_size=bs)
        assert [n for _, n in got] == [n for _, n in one] == [len(ids) - 1 for ids, _ in seqs]
        assert [a for a, _ in got] == pytest.approx([a for a, _ in one], rel=1e-5)


def test_implicit_rewards_by_hand():
    policy = ([-1.0, -2.0], [-3.0, -1.0])   # chosen, rejected summed log-probs
    ref = ([-2.0, -2.0], [-2.0, -2.0])
    # beta 0.5: chosen rewards [0.5, 0], rejected [-0.5, 0.5] -> pair 1 right, pair 2 wrong; margins 1, -0.5
    got = L.implicit_rewards(policy, ref, beta=0.5)
    assert got["accuracy"] == 0.5 and got["margin"] == pytest.approx(0.25) and got["n"] == 2
    assert got["chosen"] == pytest.approx(0.25) and got["rejected"] == pytest.approx(0.0)
    # beta scales the margin, never the accuracy
    got2 = L.implicit_rewards(policy, ref, beta=1.0)
    assert got2["accuracy"] == 0.5 and got2["margin"] == pytest.approx(0.5)
    # a tie counts as wrong
    assert L.implicit_rewards(([-1.0], [-1.0]), ([-1.0], [-1.0]))["accuracy"] == 0.0
    with pytest.raises(ValueError, match="as many"):
        L.implicit_rewards(([-1.0], [-1.0]), ([], []))


def test_implicit_reward_accuracy_matches_direct_forwards():
    policy, tok = tiny_lm(0)
    ref, _ = tiny_lm(1)
    beta = 0.2
    margins, right = [], 0
    for ex in PAIRS:
        rc = beta * (direct_logp(policy, tok, ex.prompt, ex.chosen)[0] - direct_logp(ref, tok, ex.prompt, ex.chosen)[0])
        rr = beta * (direct_logp(policy, tok, ex.prompt, ex.rejected)[0] - direct_logp(ref, tok, ex.prompt, ex.rejected)[0])
        margins.append(rc - rr)
        right += rc > rr
    got = L.implicit_reward_accuracy(policy, ref, tok, PAIRS, beta=beta, batch_size=2)
    assert got["n"] == 3 and got["accuracy"] == pytest.approx(right / 3)
    assert got["margin"] == pytest.approx(sum(margins) / 3, rel=1e-4, abs=1e-6)
    # the policy against itself: every reward is 0
    same = L.implicit_reward_accuracy(policy, policy, tok, PAIRS)
    assert same["accuracy"] == 0.0 and same["margin"] == pytest.approx(0.0, abs=1e-6)


def test_evaluate_with_an_explicit_reference_path_and_with_an_adapter_base(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = save_tiny_model(tmp_path / "base", seed=0)
    policy_dir = save_tiny_model(tmp_path / "policy", seed=3)
    res = evaluate(policy_dir, tmp_path / "e1", ["reference_nll", "implicit_reward_accuracy"], prompts=PROMPTS,
                   references=REFS, pairs=PAIRS, reference_model_path=base, beta=0.1, settings=SETTINGS)
    policy, tok = tiny_lm(3)  # the same weights as policy_dir
    ref, _ = tiny_lm(0)
    assert res["metrics"]["implicit_reward_accuracy"] == pytest.approx(L.implicit_reward_accuracy(policy, ref, tok, PAIRS))
    assert res["metrics"]["reference_nll"]["nll"] == pytest.approx(L.reference_nll(policy, tok, PROMPTS, REFS)["nll"], rel=1e-5)
    assert json.loads((tmp_path / "e1" / "results.json").read_text())["metrics"] == res["metrics"]

    # a LoRA adapter without reference_model_path: its base is the reference
    torch.manual_seed(0)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    adapter = tmp_path / "adapter"
    peft.save_pretrained(adapter)
    assert L.reference_source(adapter, None) == str(base)
    merged = peft.merge_and_unload().eval()
    res2 = evaluate(adapter, tmp_path / "e2", ["implicit_reward_accuracy"], pairs=PAIRS, settings=SETTINGS)
    want = L.implicit_reward_accuracy(merged, ref, tok, PAIRS)
    assert res2["metrics"]["implicit_reward_accuracy"]["accuracy"] == want["accuracy"]
    assert res2["metrics"]["implicit_reward_accuracy"]["margin"] == pytest.approx(want["margin"], rel=1e-3, abs=1e-5)


def test_eval_dtype_loads_every_model_in_it(tmp_path):
    from tandem.models.precision import inference_dtype, resolve

    assert inference_dtype("float32") is torch.float32 and inference_dtype("bfloat16") is torch.bfloat16
    assert inference_dtype("auto", "cpu") == resolve("auto", "cpu").weights  # bf16 where training picks it
    base, policy_dir = save_tiny_model(tmp_path / "base", seed=0), save_tiny_model(tmp_path / "policy", seed=3)
    res = evaluate(policy_dir, tmp_path / "e", ["reference_nll", "implicit_reward_accuracy"], prompts=PROMPTS,
                   references=REFS, pairs=PAIRS, reference_model_path=base, settings=SETTINGS, dtype=torch.bfloat16)
    from transformers import AutoModelForCausalLM

    tok = tiny_lm(3)[1]
    policy, ref = (AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16).eval() for d in (policy_dir, base))
    want = L.implicit_reward_accuracy(policy, ref, tok, PAIRS, batch_size=2)  # bf16 sums depend on the batching
    assert res["metrics"]["implicit_reward_accuracy"]["margin"] == pytest.approx(want["margin"], rel=1e-6)
    nll = L.reference_nll(policy, tok, PROMPTS, REFS, batch_size=2)["nll"]
    assert res["metrics"]["reference_nll"]["nll"] == pytest.approx(nll, rel=1e-6)
    fp32 = L.reference_nll(policy.float(), tok, PROMPTS, REFS, batch_size=2)["nll"]
    assert res["metrics"]["reference_nll"]["nll"] != pytest.approx(fp32, rel=1e-6)  # it did run in bf16


def test_reference_logps_are_computed_once_per_cache_dir(tmp_path, monkeypatch):
    import tandem.models.merged as merged

    base, policy_dir = save_tiny_model(tmp_path / "base", seed=0), save_tiny_model(tmp_path / "policy", seed=3)
    cache = tmp_path / "cache"
    kw = dict(pairs=PAIRS, reference_model_path=base, settings=SETTINGS, reference_cache=cache)
    first = evaluate(policy_dir, tmp_path / "e1", ["implicit_reward_accuracy"], **kw)["metrics"]
    assert len(list(cache.glob("*.json"))) == 1
    with monkeypatch.context() as m:  # the second run of a study: the reference model is not loaded again
        m.setattr(merged, "load_merged", lambda *a, **k: pytest.fail("the reference was scored again"))
        again = evaluate(policy_dir, tmp_path / "e2", ["implicit_reward_accuracy"], **kw)["metrics"]
    assert again == first
    import shutil

    moved = shutil.copytree(policy_dir, tmp_path / "another-run")  # another run of the study: its own tokenizer copy
    with monkeypatch.context() as m:
        m.setattr(merged, "load_merged", lambda *a, **k: pytest.fail("the reference was scored again"))
        assert evaluate(moved, tmp_path / "e4", ["implicit_reward_accuracy"], **kw)["metrics"] == first
    (policy, tok), (ref, _) = tiny_lm(3), tiny_lm(0)
    assert first["implicit_reward_accuracy"] == pytest.approx(L.implicit_reward_accuracy(policy, ref, tok, PAIRS, batch_size=2))
    other = evaluate(policy_dir, tmp_path / "e3", ["implicit_reward_accuracy"], **{**kw, "pairs": PAIRS[:2]})["metrics"]
    assert other["implicit_reward_accuracy"]["n"] == 2 and len(list(cache.glob("*.json"))) == 2  # other pairs: new key


@pytest.mark.parametrize("metric, given, message", [
    ("reference_nll", {"prompts": PROMPTS}, "metric 'reference_nll' needs prompts with references"),
    ("implicit_reward_accuracy", {"reference_model_path": "ref"}, r"needs held-out preference pairs \(eval.pairs\)"),
    ("implicit_reward_accuracy", {"pairs": PAIRS}, "needs a reference model: eval.reference_model"),
])
def test_missing_inputs_are_named_before_the_model_loads(metric, given, message, tmp_path, monkeypatch):
    import tandem.evaluation.run as R

    monkeypatch.setattr(R, "load_merged", lambda *a, **k: pytest.fail("the model was loaded before the check"))
    kw = {"model_path": save_tiny_model(tmp_path / "full"), **given}  # a full model: no adapter base to fall back on
    with pytest.raises(ValueError, match=message):
        evaluate(out_dir=tmp_path / "out", metrics=[metric], settings=SETTINGS, **kw)


def test_eval_block_fields_and_pairs_file(tmp_path):
    with pytest.raises(ValueError, match="implicit_reward_accuracy' needs eval.pairs"):
        EvalConfig(metrics=["implicit_reward_accuracy"])
    with pytest.raises(ValueError, match="reference_nll' needs eval.data"):
        EvalConfig(metrics=["reference_nll"])
    with pytest.raises(ValueError, match="beta"):
        EvalConfig(beta=0)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": e.prompt[0]["content"], "chosen": e.chosen,
                                                    "rejected": e.rejected} for e in PAIRS])
    got = eval_inputs(EvalConfig(pairs=str(pairs), pairs_limit=2))["pairs"]
    assert [(e.prompt, e.chosen, e.rejected) for e in got] == [(e.prompt, e.chosen, e.rejected) for e in PAIRS[:2]]
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "a", "response": "b"}])
    with pytest.raises(Exception, match="sft.jsonl"):  # an SFT file is not a set of pairs
        eval_inputs(EvalConfig(pairs=str(sft)))
