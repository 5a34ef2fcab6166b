"""Objectives on a tiny model: log-probs against full-logit computation, DPO's reference pass, reward heads."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tandem.data import collate, encode_all
from tandem.data.types import PreferenceExample, user
from tandem.models import load_reward_model
from tandem.objectives import build, sequence_logps
from tandem.objectives.reward import sequence_rewards

PAIRS = [
    PreferenceExample(user("What is 2 + 2?"), "It is 4.", "It is 5, I think."),
    PreferenceExample(user("Name a colour."), "Blue.", "A colour is a thing that"),
    PreferenceExample(user("Say hi"), "hi", "hello there friend"),
]


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def _direct_logp(model, ids, labels):
    logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    mask = torch.tensor(labels[1:]) != -100
    return float(lp[mask].sum())


@pytest.mark.parametrize("mode", ["pack", "pad"])
def test_sequence_logps_equal_full_logits(lm, mode):
    model, tok = lm
    feats, _ = encode_all(tok, PAIRS, 64, "truncate")
    batch = collate(feats, mode=mode, pad_id=tok.pad_token_id)
    s, n = sequence_logps(model, batch, num_seqs=6)
    for i, f in enumerate(feats):
        assert float(s[i]) == pytest.approx(_direct_logp(model, f["chosen_input_ids"], f["chosen_labels"]), abs=1e-4)
        assert float(s[3 + i]) == pytest.approx(_direct_logp(model, f["rejected_input_ids"], f["rejected_labels"]), abs=1e-4)
        assert int(n[i]) == sum(1 for x in f["chosen_labels"] if x != -100)


def test_dpo_prepare_stores_reference_and_first_loss_is_log2(lm):
    model, tok = lm
    feats, _ = encode_all(tok, PAIRS, 64, "truncate")
    batch_fn = lambda fs: collate(fs, mode="pack", pad_id=tok.pad_token_id)  # noqa: E731
    dpo = build("dpo", beta=0.1)
    prepared = dpo.prepare(model, feats, batch_fn)
    s, _ = sequence_logps(model, batch_fn(feats), num_seqs=6)
    assert [f["ref_chosen_logp"] for f in prepared] == pytest.approx(s[:3].tolist(), abs=1e-5)
    assert [f["ref_rejected_logp"] for f in prepared] == pytest.approx(s[3:].tolist(), abs=1e-5)
    loss, m = dpo(model, batch_fn(prepared))
    assert float(loss) == pytest.approx(math.log(2), abs=1e-5)
    assert m["rewards/margin"] == pytest.approx(0.0, abs=1e-5)


def test_reward_at_last_token_equals_hf_score(tiny_model_dir):
    model, tok = load_reward_model(str(tiny_model_dir))
    model.eval()
    feats, _ = encode_all(tok, PAIRS, 64, "truncate")
    batch = collate(feats, mode="pack", pad_id=tok.pad_token_id)
    r = sequence_rewards(model, batch, 6)
    for i, f in enumerate(feats):
        own = model(input_ids=torch.tensor([f["chosen_input_ids"]])).logits[0, 0]
        assert float(r[i]) == pytest.approx(float(own), abs=1e-4)
    loss, m = build("reward")(model, batch)
    assert 0 <= m["accuracy"] <= 1 and math.isfinite(float(loss))
