"""Encoding: chat template / fallback rendering, response-only labels, truncation and drop."""

from __future__ import annotations

import pytest
from helpers_tokenizer import make_tokenizer

from tandem.data import PreferenceExample, SFTExample, encode_all, encode_preference, encode_sft
from tandem.data.encode import IGNORE, render_fallback
from tandem.data.types import user


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer(chat_template=True)


@pytest.fixture(scope="module")
def plain_tok():
    return make_tokenizer(chat_template=False)


def labelled(feat, prefix=""):
    return [t for t in feat[prefix + "labels"] if t != IGNORE]


def test_chat_template_masks_prompt_and_labels_response_plus_eos(tok):
    ex = SFTExample([{"role": "system", "content": "Be brief."}, *user("What is 2 + 2?")], "The answer is 4.")
    f = encode_sft(tok, ex, max_length=256)
    assert len(f["input_ids"]) == len(f["labels"])
    assert tok.decode(labelled(f)) == "The answer is 4.<|im_end|>"
    n_prompt = f["labels"].index(next(t for t in f["labels"] if t != IGNORE))
    rendered = tok.apply_chat_template(ex.prompt, tokenize=False, add_generation_prompt=True)
    assert tok.decode(f["input_ids"][:n_prompt]) == rendered
    assert f["input_ids"][n_prompt:] == f["labels"][n_prompt:]
    assert f["input_ids"][-1] == tok.eos_token_id
    assert f["input_ids"][0] != tok.bos_token_id  # the template has no BOS, none is added


def test_fallback_template_with_bos(plain_tok):
    prompt = [{"role": "system", "content": "S"}, *user("Q1"), {"role": "assistant", "content": "A1"}, *user("Q2")]
    assert render_fallback(prompt) == "### System:\nS\n\n### User:\nQ1\n\n### Assistant:\nA1\n\n### User:\nQ2\n\n### Assistant:\n"
    f = encode_sft(plain_tok, SFTExample(prompt, "A2"), max_length=256)
    assert f["input_ids"][0] == plain_tok.bos_token_id and f["labels"][0] == IGNORE
    assert plain_tok.decode(f["input_ids"], skip_special_tokens=False) == "<s>" + render_fallback(prompt) + "A2<|im_end|>"
    assert plain_tok.decode(labelled(f)) == "A2<|im_end|>"


def test_preference_pair_shares_prompt(tok):
    ex = PreferenceExample(user("Pick one."), "Red is best.", "No.")
    f = encode_preference(tok, ex, max_length=256)
    assert set(f) == {"chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"}
    assert tok.decode(labelled(f, "chosen_")) == "Red is best.<|im_end|>"
    assert tok.decode(labelled(f, "rejected_")) == "No.<|im_end|>"
    n = sum(1 for t in f["chosen_labels"] if t == IGNORE)
    assert f["chosen_input_ids"][:n] == f["rejected_input_ids"][:n]
    assert sum(1 for t in f["rejected_labels"] if t == IGNORE) == n


def test_truncation_keeps_prompt_tail_and_response_head(tok):
    prompt = user("word " * 40)
    response = "answer " * 40
    full = encode_sft(tok, SFTExample(prompt, response), max_length=10_000)
    n_p = sum(1 for t in full["labels"] if t == IGNORE)
    n_r = len(full["labels"]) - n_p
    assert n_p > 20 and n_r > 20
    L = 30
    f = encode_sft(tok, SFTExample(prompt, response), max_length=L)
    assert len(f["input_ids"]) == L
    keep = L // 2  # both long: prompt keeps max(L - n_r, L // 2) = 15 tokens
    assert f["input_ids"][:keep] == full["input_ids"][n_p - keep : n_p]
    assert f["input_ids"][keep:] == full["input_ids"][n_p : n_p + L - keep]
    assert f["labels"] == [IGNORE] * keep + full["labels"][n_p : n_p + L - keep]

    # short response: the whole response fits, the prompt gives up its head
    short = encode_sft(tok, SFTExample(prompt, "ok"), max_length=L)
    full_s = encode_sft(tok, SFTExample(prompt, "ok"), max_length=10_000)
    assert short["input_ids"] == full_s["input_ids"][-L:]
    assert tok.decode(labelled(short)) == "ok<|im_end|>"


def test_truncation_leaves_at_least_one_response_token(tok):
    f = encode_sft(tok, SFTExample(user("long prompt " * 30), "resp " * 30), max_length=2)
    assert len(f["input_ids"]) == 2 and f["labels"][0] == IGNORE and f["labels"][1] != IGNORE
    assert encode_sft(tok, SFTExample(user("q"), "r"), max_length=1) is None


def test_drop_and_stats(tok):
    exs = [
        SFTExample(user("short"), "ok"),
        SFTExample(user("long " * 40), "ok"),
        SFTExample(user("q"), "long answer " * 40),
    ]
    feats, stats = encode_all(tok, exs, max_length=40, overlong="truncate")
    assert len(feats) == 3 and (stats.total, stats.kept, stats.truncated, stats.dropped) == (3, 3, 2, 0)
    assert all(len(f["input_ids"]) <= 40 for f in feats)
    feats, stats = encode_all(tok, exs, max_length=40, overlong="drop")
    assert len(feats) == 1 and (stats.kept, stats.truncated, stats.dropped) == (1, 0, 2)
    assert encode_sft(tok, exs[1], 40, overlong="drop") is None
    with pytest.raises(ValueError, match="overlong"):
        encode_sft(tok, exs[1], 40, overlong="cut")


def test_preference_truncation_uses_one_prompt_cut(tok):
    ex = PreferenceExample(user("context " * 30), "long chosen answer " * 20, "short")
    f = encode_preference(tok, ex, max_length=40)
    assert len(f["chosen_input_ids"]) == 40
    n_c = sum(1 for t in f["chosen_labels"] if t == IGNORE)
    n_r = sum(1 for t in f["rejected_labels"] if t == IGNORE)
    assert n_c == n_r == 20 and f["chosen_input_ids"][:20] == f["rejected_input_ids"][:20]
    assert tok.decode(labelled(f, "rejected_")) == "short<|im_end|>"
    feats, stats = encode_all(tok, [ex], max_length=40, overlong="drop")
    assert feats == [] and stats.dropped == 1
