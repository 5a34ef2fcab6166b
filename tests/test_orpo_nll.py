"""ORPO's NLL term over the response (tandem's default) or over prompt + response (TRL's ORPOTrainer): the targets by
hand, the value against a plain forward of the model, and the same value in the pack, pad and prefix-shared layouts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers_objectives import tiny_llama

from tandem.data.collate import collate
from tandem.objectives.orpo import ORPO, full_labels, orpo_loss
from tandem.objectives.registry import build

# two pairs sharing their prompts [1, 5, 6] and [1, 7]; labels on the responses (and EOS 2)
PAIRS = [
    {"chosen_input_ids": [1, 5, 6, 9, 10, 2], "chosen_labels": [-100, -100, -100, 9, 10, 2],
     "rejected_input_ids": [1, 5, 6, 11, 2], "rejected_labels": [-100, -100, -100, 11, 2]},
    {"chosen_input_ids": [1, 7, 12, 2], "chosen_labels": [-100, -100, 12, 2],
     "rejected_input_ids": [1, 7, 13, 14, 15, 2], "rejected_labels": [-100, -100, 13, 14, 15, 2]},
]


def test_full_labels_by_hand():
    b = collate(PAIRS[:1], mode="pack")
    # one row: chosen (seq 0) then rejected (seq 1); the first token of each sequence is not a target
    assert full_labels(b).tolist() == [[-100, 5, 6, 9, 10, 2, -100, 5, 6, 11, 2]]
    b = collate(PAIRS[:1], mode="pad")
    assert full_labels(b).tolist() == [[-100, 5, 6, 9, 10, 2], [-100, 5, 6, 11, 2, -100]]


def test_orpo_loss_with_a_given_nll_by_hand():
    # responses: chosen mean log-prob log 0.5, rejected log 0.25 -> log odds ratio = log(1) - log(1/3) = log 3
    s, n = torch.tensor([2 * math.log(0.5), 2 * math.log(0.25)]), torch.tensor([2.0, 2.0])
    loss, sft, _, ratio = orpo_loss(s, n, 1, lam=0.5, sft=torch.tensor(1.25))
    assert float(ratio[0]) == pytest.approx(math.log(3))
    assert float(loss) == pytest.approx(1.25 + 0.5 * -math.log(1 / (1 + 1 / 3)))
    assert float(sft) == 1.25
    loss, sft, _, _ = orpo_loss(s, n, 1, lam=0.5)  # default: the chosen response's token-mean NLL
    assert float(sft) == pytest.approx(math.log(2))


def plain_nll(model, ids_list):
    """Token-mean NLL of tokens 1.. of each sequence (prompt included), by a plain HF forward per sequence."""
    tot, cnt = 0.0, 0
    for ids in ids_list:
        x = torch.tensor([ids])
        logits = model(input_ids=x).logits[0, :-1].float()
        tot += float(F.cross_entropy(logits, x[0, 1:], reduction="sum"))
        cnt += len(ids) - 1
    return tot / cnt


@pytest.mark.parametrize("layout", [{"mode": "pack"}, {"mode": "pad"}, {"mode": "pack", "prefix_sharing": True},
                                    {"mode": "pack", "max_tokens_per_row": 8}])
def test_prompt_response_nll_is_trls_and_the_odds_ratio_is_unchanged(layout):
    torch.manual_seed(0)
    model = tiny_llama().eval()
    batch = collate(PAIRS, **layout)
    with torch.no_grad():
        _, m_resp = ORPO(lam=0.1)(model, batch)
        loss, m_full = ORPO(lam=0.1, nll_on="prompt_response")(model, batch)
        want = plain_nll(model, [p["chosen_input_ids"] for p in PAIRS])
    assert m_full["sft_loss"] == pytest.approx(want, rel=1e-5)
    assert m_full["sft_loss"] != pytest.approx(m_resp["sft_loss"], rel=1e-3)
    for k in ("or_loss", "log_odds_ratio", "chosen_logp", "rejected_logp"):
        assert m_full[k] == pytest.approx(m_resp[k], rel=1e-5), k
    assert float(loss) == pytest.approx(want + 0.1 * m_full["or_loss"], rel=1e-5)


def test_prompt_response_nll_has_gradients_and_the_option_is_checked():
    torch.manual_seed(0)
    model = tiny_llama()
    loss, _ = ORPO(nll_on="prompt_response")(model, collate(PAIRS))
    loss.backward()
    assert float(model.get_input_embeddings().weight.grad[5].abs().sum()) > 0  # a prompt token is a target now
    with pytest.raises(ValueError, match="orpo nll_on 'all': choose one of response, prompt_response"):
        build("orpo", nll_on="all")
