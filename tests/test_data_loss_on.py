"""loss_on: all_assistant (tandem.data.encode): every assistant turn of a multi-turn chat is labelled, with the
chat template's end-of-turn marker, and nothing else; truncation keeps ids and labels aligned."""

from __future__ import annotations

import pytest
from helpers_tokenizer import make_tokenizer

from tandem.data import DataError, SFTExample, encode_all, encode_sft
from tandem.data.encode import IGNORE, prompt_ids, prompt_ids_labels

CHAT = SFTExample(
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "How are you?"}],
    "Fine, thanks.",
)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer(chat_template=True)


def labelled_runs(tok, feat) -> list[str]:
    """The decoded text of each maximal run of labelled positions."""
    runs, cur = [], []
    for i, lab in zip(feat["input_ids"], feat["labels"]):
        if lab != IGNORE:
            assert lab == i
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [tok.decode(r) for r in runs]


def test_last_labels_only_the_final_reply(tok):
    feat = encode_sft(tok, CHAT, max_length=256)
    assert labelled_runs(tok, feat) == ["Fine, thanks.<|im_end|>"]
    assert encode_sft(tok, CHAT, max_length=256, loss_on="last") == feat


def test_all_assistant_labels_every_assistant_turn_with_its_end_marker(tok):
    feat = encode_sft(tok, CHAT, max_length=256, loss_on="all_assistant")
    assert labelled_runs(tok, feat) == ["Hello.<|im_end|>", "Fine, thanks.<|im_end|>"]
    rendered = tok.apply_chat_template(CHAT.prompt, tokenize=False, add_generation_prompt=True)
    assert tok.decode(feat["input_ids"]) == rendered + "Fine, thanks.<|im_end|>"
    n_turn = len(tok("Hello.<|im_end|>", add_special_tokens=False)["input_ids"])
    n_reply = len(tok("Fine, thanks.", add_special_tokens=False)["input_ids"]) + 1
    assert sum(lab != IGNORE for lab in feat["labels"]) == n_turn + n_reply  # by hand: the two turns, nothing else


def test_all_assistant_with_the_fallback_template(tok):
    plain = make_tokenizer(chat_template=False)
    feat = encode_sft(plain, CHAT, max_length=256, loss_on="all_assistant")
    assert labelled_runs(plain, feat) == ["Hello.", "Fine, thanks.<|im_end|>"]
    assert feat["input_ids"][0] == plain.bos_token_id and feat["labels"][0] == IGNORE


def test_single_turn_and_leading_assistant_turns_are_unchanged(tok):
    one = SFTExample([{"role": "user", "content": "Hi"}], "Hello.")
    assert encode_sft(tok, one, 64, loss_on="all_assistant") == encode_sft(tok, one, 64)
    lead = SFTExample([{"role": "assistant", "content": "Welcome!"}, {"role": "user", "content": "Hi"}], "Hello.")
    ids, labels = prompt_ids_labels(tok, lead.prompt, "all_assistant")
    assert ids == prompt_ids(tok, lead.prompt) and set(labels) == {IGNORE}


def test_truncation_keeps_ids_and_labels_aligned(tok):
    full = encode_sft(tok, CHAT, max_length=256, loss_on="all_assistant")
    n_reply = len(tok("Fine, thanks.", add_special_tokens=False)["input_ids"]) + 1
    max_length = 2 * n_reply + 6  # the prompt keeps max_length - n_reply tokens, the reply stays whole
    assert max_length < len(full["input_ids"])
    cut = encode_sft(tok, CHAT, max_length=max_length, loss_on="all_assistant")
    assert len(cut["input_ids"]) == max_length
    assert cut["input_ids"] == full["input_ids"][-len(cut["input_ids"]):]
    assert cut["labels"][1:] == full["labels"][-len(cut["labels"]) + 1:] and cut["labels"][0] == IGNORE


def test_a_template_that_rewrites_earlier_turns_is_refused():
    tok = make_tokenizer(chat_template=False)
    tok.chat_template = ("{% for m in messages %}{% if loop.last %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                         "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(DataError, match="loss_on: all_assistant needs a chat template whose rendering"):
        encode_sft(tok, CHAT, 256, loss_on="all_assistant")
    assert encode_sft(tok, CHAT, 256) is not None  # loss_on: last does not care


def test_encode_all_passes_loss_on_and_checks_it(tok):
    feats, stats = encode_all(tok, [CHAT], 256, loss_on="all_assistant")
    assert stats.kept == 1 and len(labelled_runs(tok, feats[0])) == 2
    with pytest.raises(ValueError, match="loss_on must be one of"):
        encode_all(tok, [CHAT], 256, loss_on="every")
