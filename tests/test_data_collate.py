"""Collation (batch contract), batch order, and packing isolation on a tiny Llama."""

from __future__ import annotations

import pytest
import torch
from helpers_tokenizer import make_tokenizer

from tandem.data import PreferenceExample, SFTExample, batches, collate, encode_all
from tandem.data.types import user
from tandem.objectives.logprobs import sequence_logps

I = -100


def sft(ids, n_prompt):
    return {"input_ids": list(ids), "labels": [I] * n_prompt + list(ids[n_prompt:])}


def test_pack_one_row_hand_checked():
    feats = [sft([5, 6, 7], 1), sft([8, 9], 1)]
    b = collate(feats, mode="pack", pad_id=0)
    assert set(b) == {"input_ids", "labels", "position_ids", "seq_ids"}
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert b["labels"].tolist() == [[I, 6, 7, I, 9]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert b["seq_ids"].tolist() == [[0, 0, 0, 1, 1]]
    assert b["input_ids"].dtype == torch.long


def test_pad_mode_hand_checked():
    b = collate([sft([5, 6, 7], 1), sft([8, 9], 1)], mode="pad", pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert b["labels"].tolist() == [[I, 6, 7], [I, 9, I]]
    assert b["position_ids"].tolist() == [[0, 1, 2], [0, 1, 0]]
    assert b["seq_ids"].tolist() == [[0, 0, 0], [1, 1, -1]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_preference_order_and_ref_scalars():
    f0 = {"chosen_input_ids": [1, 2], "chosen_labels": [I, 2], "rejected_input_ids": [1, 3, 3], "rejected_labels": [I, 3, 3],
          "ref_chosen_logp": -1.5, "ref_rejected_logp": -2.0}
    f1 = {"chosen_input_ids": [4, 5], "chosen_labels": [I, 5], "rejected_input_ids": [4, 6], "rejected_labels": [I, 6],
          "ref_chosen_logp": -0.5, "ref_rejected_logp": -3.0}
    b = collate([f0, f1], mode="pack", pad_id=0)
    # chosen 0, chosen 1, rejected 0, rejected 1
    assert b["input_ids"].tolist() == [[1, 2, 4, 5, 1, 3, 3, 4, 6]]
    assert b["seq_ids"].tolist() == [[0, 0, 1, 1, 2, 2, 2, 3, 3]]
    assert b["position_ids"].tolist() == [[0, 1, 0, 1, 0, 1, 2, 0, 1]]
    assert b["ref_chosen_logp"].tolist() == [-1.5, -0.5] and b["ref_chosen_logp"].dtype == torch.float32
    assert b["ref_rejected_logp"].tolist() == [-2.0, -3.0]
    p = collate([f0, f1], mode="pad", pad_id=0)
    assert p["seq_ids"][:, 0].tolist() == [0, 1, 2, 3] and p["input_ids"].shape == (4, 3)


def test_first_fit_decreasing_rows():
    lens = [3, 5, 2, 4, 1]
    feats = [sft(list(range(10 * k + 1, 10 * k + 1 + n)), 1) for k, n in enumerate(lens)]
    b = collate(feats, mode="pack", pad_id=0, max_tokens_per_row=6)
    # decreasing: 5(s1), 4(s3), 3(s0), 2(s2), 1(s4) -> rows [s1, s4], [s3, s2], [s0]
    assert b["seq_ids"].tolist() == [[1, 1, 1, 1, 1, 4], [3, 3, 3, 3, 2, 2], [0, 0, 0, -1, -1, -1]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0], [0, 1, 2, 3, 0, 1], [0, 1, 2, 0, 1, 2]]
    assert b["labels"][2].tolist() == [I, 2, 3, I, I, I]
    assert b["input_ids"][2].tolist() == [1, 2, 3, 0, 0, 0]
    assert "attention_mask" not in b
    # a sequence longer than a row gets a row of its own
    b = collate([sft([1] * 8, 1), sft([2] * 2, 1)], mode="pack", pad_id=0, max_tokens_per_row=4)
    assert b["input_ids"].shape == (2, 8) and b["seq_ids"][1].tolist() == [1, 1] + [-1] * 6


def test_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        collate([sft([1, 2], 1)], mode="zip", pad_id=0)


def test_batches_shuffle_and_grouping():
    feats = [sft([1] * (k % 17 + 2), 1) for k in range(230)]
    plain = batches(feats, 8, shuffle_seed=None, group_by_length=False)
    assert plain[0] == list(range(8)) and plain[-1] == list(range(224, 230))
    a = batches(feats, 8, shuffle_seed=3, group_by_length=False)
    assert a == batches(feats, 8, shuffle_seed=3, group_by_length=False) != batches(feats, 8, 4, False)
    assert sorted(i for bt in a for i in bt) == list(range(230))
    g = batches(feats, 8, shuffle_seed=3, group_by_length=True)
    assert sorted(i for bt in g for i in bt) == list(range(230))
    assert all(len(bt) == 8 for bt in g[:-1]) and len(g[-1]) == 6  # the incomplete batch is last
    spread = lambda bs: sum(max(len(feats[i]["input_ids"]) for i in bt) - min(len(feats[i]["input_ids"]) for i in bt) for bt in bs)
    assert spread(g) < spread(a) / 3
    assert g == batches(feats, 8, shuffle_seed=3, group_by_length=True)
    longest = [max(len(feats[i]["input_ids"]) for i in bt) for bt in g]
    assert longest != sorted(longest, reverse=True)  # batch order is shuffled, not longest-first


# --------------------------------------------------------------------------------- packing isolation


@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer(chat_template=True)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    return model, tok


def test_packed_row_logits_equal_each_sequence_alone(tiny):
    model, tok = tiny
    exs = [SFTExample(user("What is 2 + 2?"), "The answer is 4."), SFTExample(user("Hi"), "Hello there, friend."),
           SFTExample(user("Name a fox."), "Quick brown fox.")]
    feats, _ = encode_all(tok, exs, 128)
    b = collate(feats, mode="pack", pad_id=tok.pad_token_id)
    with torch.no_grad():
        packed = model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False).logits[0]
        start = 0
        for f in feats:
            ids = torch.tensor([f["input_ids"]])
            alone = model(input_ids=ids, use_cache=False).logits[0]
            torch.testing.assert_close(packed[start : start + len(f["input_ids"])], alone, atol=1e-5, rtol=0)
            start += len(f["input_ids"])
        # sanity: without restarting positions/blocking, the second sequence's logits would differ
        mixed = model(input_ids=b["input_ids"], use_cache=False).logits[0]
        n0 = len(feats[0]["input_ids"])
        assert not torch.allclose(mixed[n0 : n0 + 3], packed[n0 : n0 + 3], atol=1e-5)


def test_sequence_logps_same_in_pack_and_pad(tiny):
    model, tok = tiny
    pairs = [PreferenceExample(user("Pick a colour."), "Blue is calm.", "No."),
             PreferenceExample(user("What is 23 + 45?"), "68", "The answer is 67.")]
    feats, _ = encode_all(tok, pairs, 128)
    with torch.no_grad():
        results = [
            sequence_logps(model, collate(feats, mode=m, pad_id=tok.pad_token_id, max_tokens_per_row=r), num_seqs=4)
            for m, r in (("pack", None), ("pad", None), ("pack", 40))
        ]
    (s0, n0) = results[0]
    expected_n = [sum(1 for t in f[k] if t != I) for k in ("chosen_labels", "rejected_labels") for f in feats]
    assert n0.tolist() == expected_n
    for s, n in results[1:]:
        assert n.tolist() == expected_n
        torch.testing.assert_close(s, s0, atol=1e-5, rtol=0)
    # hand check of one value: sum of log-softmax of chosen 0 computed on its own
    f = feats[0]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([f["chosen_input_ids"]]), use_cache=False).logits[0]
    lp = torch.log_softmax(logits.float(), -1)
    ref = sum(lp[t - 1, y] for t, y in enumerate(f["chosen_labels"]) if y != I)
    torch.testing.assert_close(s0[0], ref, atol=1e-5, rtol=0)
